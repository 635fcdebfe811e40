"""Human labels: the label server's endpoints (plain HTTP), the page in a real headless browser,
concurrent labelling, bad input, and labels flowing into the leaderboard's human check."""

import json
import multiprocessing
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch

from mi_bench.labelling import CHOICES, LabelServer, LabelSession, load_labels, save_label, session_for_run


def _copy_run(record, tmp_path):
    """A private copy of the smoke run (folder and record) so tests can write labels freely."""
    folder = tmp_path / record["run_id"]
    shutil.copytree(record["run_dir"], folder)
    return {**record, "run_dir": str(folder)}


@pytest.fixture()
def served(smoke_run, tmp_path):
    rec = _copy_run(smoke_run, tmp_path)
    server = LabelServer(session_for_run(rec), port=0)
    server.start_background()
    yield rec, server
    server.shutdown()
    server.server_close()


def _get(url, host=None):
    req = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(url, body, ctype="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_endpoints_serve_items_images_and_store_labels(served):
    rec, server = served
    base = server.url
    assert server.server_address[0] == "127.0.0.1"
    status, ctype, body = _get(base)
    assert status == 200 and ctype.startswith("text/html")
    page = body.decode()
    assert "http://" not in page and "https://" not in page  # no external assets
    status, _, body = _get(base + "api/items")
    items = json.loads(body)
    n = rec["metrics"]["n_reconstructions"]
    assert status == 200 and items["n"] == n and len(items["items"]) == n
    assert sorted(it["index"] for it in items["items"]) == list(range(n))
    assert [it["index"] for it in items["items"]] != list(range(n)) or n < 3  # shuffled
    # blind to the judges: no prediction or accuracy anywhere in what the page receives
    assert "predict" not in body.decode() and "acc" not in body.decode()
    first = items["items"][0]
    roles = [r["role"] for r in first["references"]]
    assert sorted(roles) == ["attacked", "other", "other"]
    attacked = next(r for r in first["references"] if r["role"] == "attacked")
    assert attacked["class"] == first["class"]
    for url in (first["image"], first["sheet"], attacked["images"][0], first["image"] + "?scale=4"):
        status, ctype, png = _get(base + url.lstrip("/"))
        assert status == 200 and ctype == "image/png" and png[:8] == b"\x89PNG\r\n\x1a\n", url
    # the same order on every request (several sessions label the same sequence)
    assert [it["index"] for it in json.loads(_get(base + "api/items")[2])["items"]] == \
        [it["index"] for it in items["items"]]

    status, out = _post(base + "api/label", {"index": first["index"], "label": "same", "labeller": "t"})
    assert status == 200 and out == {"ok": True, "index": first["index"], "label": "same",
                                     "labelled": 1, "total": n}
    assert load_labels(rec["run_dir"])[first["index"]]["label"] == "same"
    assert json.loads(_get(base + "api/labels")[2]) == {str(first["index"]): "same"}
    assert json.loads(_get(base + "api/items")[2])["items"][0]["label"] == "same"
    # relabelling one item replaces its label
    _post(base + "api/label", {"index": first["index"], "label": "different"})
    assert load_labels(rec["run_dir"])[first["index"]]["label"] == "different"
    # labelling by eye from stacked sheets: positions in the shuffled order
    status, ctype, png = _get(base + "api/sheets.png?start=1&count=3")
    assert status == 200 and png[:4] == b"\x89PNG"
    status, out = _post(base + "api/label", {"position": 1, "label": "unsure"})
    assert status == 200 and out["index"] == items["items"][1]["index"]
    assert load_labels(rec["run_dir"])[items["items"][1]["index"]]["label"] == "unsure"


@pytest.mark.parametrize("body,ctype,status,needle", [
    ({"index": 10_000, "label": "same"}, "application/json", 400, "out of range"),
    ({"index": -1, "label": "same"}, "application/json", 400, "out of range"),
    ({"index": 0, "label": "maybe"}, "application/json", 400, "label must be one of"),
    ({"index": "0", "label": "same"}, "application/json", 400, "'index' must be an integer"),
    ({"position": 10_000, "label": "same"}, "application/json", 400, "'position' must be an integer"),
    (b"{not json", "application/json", 400, "Expecting"),
    ({"index": 0, "label": "same"}, "text/plain", 415, "application/json"),
])
def test_bad_labels_are_refused_with_a_message(served, body, ctype, status, needle):
    rec, server = served
    code, out = _post(server.url + "api/label", body, ctype)
    assert code == status and needle in out["error"]
    assert load_labels(rec["run_dir"]) == {}


def test_bad_paths_and_foreign_hosts_are_refused(served):
    _, server = served
    for path, status in (("api/image/9999.png", 404), ("api/image/x.png", 400), ("api/item/9999.png", 404),
                         ("api/real/0/99.png", 404), ("api/nothing", 404), ("api/image/0.png?scale=99", 400),
                         ("api/sheets.png?count=0", 400)):
        code, ctype, body = _get(server.url + path)
        assert code == status and ctype == "application/json" and json.loads(body)["error"], path
    code, _, body = _get(server.url + "api/items", host=f"evil.example:{server.server_address[1]}")
    assert code == 403 and "127.0.0.1" in json.loads(body)["error"]


def _label_many(folder, run_id, indices, label):
    for i in indices:
        save_label(folder, run_id, i, label, labeller=f"p{i % 3}")


def test_concurrent_labelling_loses_no_label(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    # threads
    threads = [threading.Thread(target=_label_many, args=(folder, "r", range(k, 60, 4), "same")) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(load_labels(folder)) == list(range(60))
    # processes
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_label_many, args=(folder, "r", range(60 + k, 100, 2), "unsure")) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    labels = load_labels(folder)
    assert sorted(labels) == list(range(100))
    assert {labels[i]["label"] for i in range(60, 100)} == {"unsure"}
    assert json.loads((folder / "labels.json").read_text())["run_id"] == "r"


def test_labels_round_trip_into_the_leaderboard_human_check(smoke_run, tmp_path):
    """Labels stored in the run folder reach the leaderboard: human accuracy and each judge's
    false-positive rate, computed against the judges' recorded predictions."""
    from mi_bench.results import ResultStore, leaderboard

    rec = _copy_run(smoke_run, tmp_path)
    store = ResultStore(tmp_path / "r.sqlite")
    store.append(rec)
    assert leaderboard(store.records())[0]["human"] is None  # nobody labelled yet
    judged = rec["metrics"]["judges"]
    n_s = len(judged["eval"]["predictions"][0])
    truth = [rec["protocol"]["data"]["private_classes"][c] for c in rec["protocol"]["attacked_classes"]]
    credited = lambda j, i: judged[j]["predictions"][i // n_s][i % n_s] == truth[i // n_s]  # noqa: E731
    n = rec["metrics"]["n_reconstructions"]
    said = {i: ("same" if i % 2 else "different") for i in range(n)}
    said[0] = "unsure"
    for i, lab in said.items():
        save_label(rec["run_dir"], rec["run_id"], i, lab)
    h = leaderboard(ResultStore(tmp_path / "r.sqlite").records())[0]["human"]
    decided = [i for i in said if said[i] != "unsure"]
    assert h["n_labelled"] == len(decided) and h["n_unsure"] == 1
    assert h["acc"] == pytest.approx(sum(said[i] == "same" for i in decided) / len(decided))
    diff = [i for i in decided if said[i] == "different"]
    for j in judged:
        assert h["judges"][j]["fpr"] == pytest.approx(sum(credited(j, i) for i in diff) / len(diff))
        assert h["judges"][j]["agreement"] == pytest.approx(
            sum(credited(j, i) == (said[i] == "same") for i in decided) / len(decided))
    from mi_bench.results import render
    assert "human acc %" in render(leaderboard(store.records()), "markdown")


def test_label_cli_refuses_unknown_runs_and_serves_known_ones(smoke_run, tmp_path):
    from click.testing import CliRunner

    from mi_bench.cli import cli
    from mi_bench.results import ResultStore

    rec = _copy_run(smoke_run, tmp_path)
    db = tmp_path / "r.sqlite"
    ResultStore(db).append(rec)
    r = CliRunner().invoke(cli, ["label", "no-such-run", "--db", str(db), "--no-browser"])
    assert r.exit_code == 2 and "no run 'no-such-run'" in r.stderr
    r = CliRunner().invoke(cli, ["label", rec["run_id"], "--db", str(tmp_path / "none.sqlite")])
    assert r.exit_code == 2 and "no results database" in r.stderr

    proc = subprocess.Popen([sys.executable, "-m", "mi_bench.cli", "label", rec["run_id"], "--db", str(db),
                             "--port", "0", "--no-browser"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.poll() is not None else url
        items = json.loads(_get(url + "api/items")[2])
        assert items["run_id"] == rec["run_id"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_session_refuses_a_run_without_saved_reconstructions(smoke_run, tmp_path):
    from mi_bench.errors import ArtifactError

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="reconstructions"):
        session_for_run({**smoke_run, "run_dir": str(empty)})


def test_the_page_labels_in_a_real_browser(served, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rec, server = served
    browser.get(server.url)
    wait = WebDriverWait(browser, 20)
    wait.until(lambda d: "labelled" in d.find_element(By.ID, "status").text)
    first = int(browser.find_element(By.ID, "recon").get_attribute("data-index"))
    rows = browser.find_elements(By.CSS_SELECTOR, "#refs .row")
    assert len(rows) == 3 and len(browser.find_elements(By.CSS_SELECTOR, "#refs .row.attacked")) == 1
    # every image on the page really loaded
    wait.until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
    browser.find_element(By.ID, "labeller").clear()
    browser.find_element(By.ID, "labeller").send_keys("selenium")
    browser.find_element(By.ID, "same").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("1 / "))
    second = int(browser.find_element(By.ID, "recon").get_attribute("data-index"))
    assert second != first  # moved on to the next item
    browser.find_element(By.TAG_NAME, "body").send_keys("d")  # keyboard shortcut
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("2 / "))
    labels = load_labels(rec["run_dir"])
    assert labels[first]["label"] == "same" and labels[first]["labeller"] == "selenium"
    assert labels[second]["label"] == "different"
    # a reload resumes at the first unlabelled item and shows the progress
    browser.get(server.url)
    wait.until(lambda d: d.find_element(By.ID, "status").text.startswith("2 / "))
    assert int(browser.find_element(By.ID, "recon").get_attribute("data-index")) not in (first, second)


def test_sheet_marks_the_attacked_row():
    imgs = torch.zeros(2, 2, 1, 8, 8)
    refs = {c: torch.full((3, 1, 8, 8), c / 4) for c in range(4)}
    sess = LabelSession("r", Path("."), imgs, [0, 1], refs, {c: str(c) for c in refs})
    assert len(sess.items) == 4 and all(len(it["rows"]) == 3 and it["class"] in it["rows"] for it in sess.items)
    assert sess.sheet(0).shape[2] == 3 and sess.sheets(0, 4).shape[0] > 4 * sess.sheet(0).shape[0]
    with pytest.raises(IndexError):
        sess.image(4)
    assert set(CHOICES) == {"same", "different", "unsure"}
