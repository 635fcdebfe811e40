"""The HTML report (issue 11): one self-contained file with sortable leaderboards, tradeoff plots
with the Pareto front, galleries framed by the judges' verdicts and each run's protocol; and the
page works in a real (headless) browser."""

import re
from html.parser import HTMLParser

import pytest
from boards import record, save_run, write_jsonl
from click.testing import CliRunner

from mi_bench.cli import cli
from mi_bench.results.gallery import esc
from mi_bench.viz import pareto_front

ALL_RIGHT = [[c, c] for c in range(5)]
ALL_WRONG = [[9, 9] for _ in range(5)]


@pytest.fixture(scope="module")
def board_records(tmp_path_factory):
    """GMI on digits: none (3 seeds, all judges right), bido (eval right, robust wrong: orange
    frames), mid (no run folder: legacy, its grid.png only), an old record without judges or
    images; KED-MI; and MNIST whose data root is empty (real images unavailable)."""
    root = tmp_path_factory.mktemp("report")
    runs = root / "runs"
    recs = []
    for s, acc in enumerate([1.0, 0.9, 0.8]):
        recs.append(save_run(runs / f"none{s}", record(f"none{s}", seed=s, attack_acc=acc, target_acc=0.97 + 0.01 * s,
                                                       judges={"eval": ALL_RIGHT, "robust": ALL_RIGHT}), s))
    recs.append(save_run(runs / "bido0", record("bido0", defense="bido", label="bido[lambda_x=0.05,lambda_y=0.5]",
                                                attack_acc=0.4, target_acc=0.99,
                                                judges={"eval": ALL_RIGHT, "robust": ALL_WRONG}), 7))
    grid_dir = root / "grids"
    grid_dir.mkdir()
    from PIL import Image
    Image.new("RGB", (300, 120), (200, 30, 30)).save(grid_dir / "mid0.png")
    mid = record("mid0", defense="mid", label="mid[beta=0.1]", attack_acc=0.2, target_acc=0.6)
    mid["grid"] = str(grid_dir / "mid0.png")  # recorded before reconstructions were kept
    old = record("old0", defense="qad", label="qad[alpha_q=0.003]", attack_acc=0.5, target_acc=0.9)
    old["metrics"].pop("judges")
    old["metrics"]["evaluator_predictions"] = ALL_RIGHT
    recs += [mid, old]
    recs.append(save_run(runs / "ked0", record("ked0", attack="kedmi", attack_acc=0.3), 3))
    mn = record("mn0", dataset="mnist", protocol="disjoint_classes", attack_acc=0.6)
    mn["config"]["data_root"] = str(root / "no-data-here")
    recs.append(save_run(runs / "mn0", mn, 4))
    (runs / "mn0" / "grid.png").write_bytes((grid_dir / "mid0.png").read_bytes())
    return root, write_jsonl(root / "records.jsonl", recs)


def _report(board_records, *args):
    root, path = board_records
    out = root / f"report{len(list(root.glob('report*.html')))}.html"
    r = CliRunner().invoke(cli, ["report", "--records", str(path), "-o", str(out), "--gallery-samples", "2", *args])
    assert r.exit_code == 0, r.output
    return out, out.read_text()


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        self.refs += [(tag, k, v) for k, v in a.items() if k in ("src", "href", "srcset", "action", "data")]


def test_report_is_one_self_contained_file(board_records):
    out, page = _report(board_records)
    assert out.stat().st_size < 600_000
    p = _Refs()
    p.feed(page)
    for tag, attr, value in p.refs:  # every reference is embedded data or a link inside the page
        assert value.startswith(("data:", "#")), (tag, attr, value[:80])
    assert all(t != "script" or "src" not in a for t, a in p.tags)
    assert all(t != "link" or a.get("href", "").startswith("data:") for t, a in p.tags)
    assert all(t not in ("iframe", "object", "embed") for t, _ in p.tags)
    for url in re.findall(r"url\(([^)]*)\)", page):
        assert url.strip("\"'").startswith("data:"), url[:60]
    assert "http://" not in page and "https://" not in page  # URLs quoted in reasons are defused
    assert "https&#58;//github.com/mseitzer" in page and esc("https://x") == "https&#58;//x"
    assert "@import" not in page


def test_report_sections_tables_plots_and_protocols(board_records):
    _, page = _report(board_records)
    for title in ("gmi on digits (disjoint_samples, preset quick)", "kedmi on digits (disjoint_samples, preset quick)",
                  "gmi on mnist (disjoint_classes, preset quick)"):
        assert f"<h2>{title}</h2>" in page
    assert page.count('class="board sortable"') >= 3
    assert page.count('<img class="plot"') == 3
    assert "seeds: n (list)" in page and ">3 (0,1,2)<" in page
    # every run one click away: a link in its leaderboard row and a <details> holding its config
    for rid in ("none0", "none1", "none2", "bido0", "mid0", "old0", "ked0", "mn0"):
        assert f'href="#run-{rid}"' in page and f'<details class="protocol" id="run-{rid}">' in page
    assert '&quot;' not in page.split("<section")[1] and '"config": {' in page
    # the protocol, the same for these runs, is stored once and copied in when a run opens
    assert page.count('<details class="protocol" id="protocol-') == 1 and page.count("&quot;attacked_classes&quot;") == 0
    assert page.count('"attacked_classes"') == 1 and page.count('data-ref="protocol-1"') == 8
    # n/a with its footnote; the filters apply
    assert re.search(r"n/a<sup><a href=\"#[^\"]+-n1\" title=\"Inception-v3", page)
    _, only = _report(board_records, "--attack", "gmi", "--dataset", "digits", "--defense", "none,bido")
    assert "kedmi on digits" not in only and "gmi on mnist" not in only
    assert 'id="run-none0"' in only and 'id="run-mid0"' not in only and 'id="run-bido0"' in only


def test_gallery_frames_follow_each_judge_and_falls_back_to_the_grid(board_records):
    _, page = _report(board_records)
    section = page.split("<h2>gmi on digits (disjoint_samples, preset quick)</h2>")[1].split("<h2>")[0]
    cards = section.split('<div class="card">')[1:]
    by_name = {re.search(r"<h4>(.*?)</h4>", c).group(1): c for c in cards}
    assert set(by_name) == {"none", "bido[lambda_x=0.05,lambda_y=0.5]", "mid[beta=0.1]", "qad[alpha_q=0.003]"}
    # the same classes in every gallery with images, real images beside reconstructions
    for name in ("none", "bido[lambda_x=0.05,lambda_y=0.5]"):
        card = by_name[name]
        assert re.findall(r"class (\d)<br>", card) == ["0", "1", "2", "3", "4"]
        assert card.count('<span class="real ') == 5 * 3 and card.count('<span class="recon f-') == 5 * 2
    # none: every judge right (green); bido: eval right, robust wrong (orange), one dot per judge
    assert by_name["none"].count("recon f-ok") == 10
    bido = by_name["bido[lambda_x=0.05,lambda_y=0.5]"]
    assert bido.count("recon f-some") == 10 and bido.count("<i class=\"d-") == 20 and bido.count("d-no") == 10
    assert 'title="class 0 (label 0): eval 0 ✓, robust 9"' in bido
    # the 3-seed entry shows its lowest seed, and says which run
    assert "run none0, seed 0" in by_name["none"]
    # no reconstructions kept: the grid, and why; nothing at all: said so
    assert "Showing the run's grid.png" in by_name["mid[beta=0.1]"] and '<img class="grid"' in by_name["mid[beta=0.1]"]
    assert "No images" in by_name["qad[alpha_q=0.003]"]
    # the dataset cannot be loaded: the grid instead, and the reason
    mnist = page.split("<h2>gmi on mnist (disjoint_classes, preset quick)</h2>")[1]
    assert "Real images unavailable: the dataset could not be loaded" in mnist and '<img class="grid"' in mnist
    # real images are embedded once per report and shared by the cards (CSS classes)
    assert page.count('.ri0{background-image:url("data:image/png;base64,') == 1


def test_pareto_front():
    pts = [(0.9, 0.99), (0.5, 0.95), (0.5, 0.90), (0.2, 0.60), (0.6, 0.99), (0.2, 0.60)]
    assert pareto_front(pts) == [3, 5, 1, 4]  # (0.2, 0.6) twice, (0.5, 0.95), (0.6, 0.99)
    assert pareto_front([]) == []


def test_report_in_a_real_browser(board_records, browser, tmp_path):
    """No console errors; clicking a header reorders the rows; every image loads."""
    from selenium.webdriver.common.by import By

    out, _ = _report(board_records)
    browser.get_log("browser")  # drop anything from earlier pages
    browser.get(out.resolve().as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
    table = browser.find_element(By.CSS_SELECTOR, "section table.board")
    def order():
        return [tr.find_elements(By.TAG_NAME, "td")[0].text for tr in table.find_elements(By.CSS_SELECTOR, "tbody tr")]
    before = order()
    head = next(th for th in table.find_elements(By.TAG_NAME, "th") if th.text.startswith("attack acc"))
    head.click()  # ascending attack accuracy: mid (20), bido (40), qad (50), none (90)
    first = order()
    head.click()  # descending
    second = order()
    assert first[0].startswith("mid") and second[0] == "none" and first != before and second == first[::-1]
    # every <img> decoded, and every real image behind a CSS class
    imgs = browser.execute_script(
        "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
    assert len(imgs) >= 10 and all(ok and w > 0 for ok, w, _ in imgs), [i for i in imgs if not i[1]]
    widths = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const urls = Array.from(document.querySelectorAll('span.real')).map(
            s => getComputedStyle(s).backgroundImage.slice(5, -2));
        Promise.all(urls.map(u => new Promise(r => { const i = new Image(); i.onload = () => r(i.naturalWidth);
            i.onerror = () => r(0); i.src = u; }))).then(done);""")
    assert len(widths) >= 15 and min(widths) > 0
    # a run link opens that run's protocol
    browser.find_element(By.CSS_SELECTOR, 'a.run[href="#run-none1"]').click()
    opened = browser.find_element(By.ID, "run-none1")
    assert opened.get_attribute("open") is not None
    shown = opened.find_element(By.CSS_SELECTOR, "pre.shared").get_attribute("textContent")
    assert '"attacked_classes": [0, 1, 2, 3, 4]' in shown and '"seed": 1' in opened.text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_report_screenshot(board_records, browser, tmp_path):
    """--screenshot writes a modest PNG of the page (needs the same Chromium as ``browser``)."""
    from PIL import Image

    _, path = board_records
    shot = tmp_path / "page.png"
    r = CliRunner().invoke(cli, ["report", "--records", str(path), "-o", str(tmp_path / "r.html"),
                                 "--screenshot", str(shot)])
    assert r.exit_code == 0, r.output
    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 500 and len(im.getcolors(256) or []) > 4
    assert shot.stat().st_size < 400_000


def test_report_bad_input_exits_2(tmp_path):
    r = CliRunner().invoke(cli, ["report", "--db", str(tmp_path / "none.sqlite"), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "no results database" in r.output and not (tmp_path / "r.html").exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    r = CliRunner().invoke(cli, ["report", "--records", str(bad), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "is not a JSON record" in r.output


def test_report_of_a_pipeline_run(smoke_run, tmp_path):
    """A record and run folder written by the pipeline (preset=smoke): reconstructions beside real
    digits, three judges' dots under each, the protocol with the judges' descriptions."""
    path = write_jsonl(tmp_path / "r.jsonl", [smoke_run])
    out = tmp_path / "r.html"
    r = CliRunner().invoke(cli, ["report", "--records", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    card = page.split('<div class="card">')[1]
    n_s = smoke_run["metrics"]["n_reconstructions"] // 5
    assert card.count('<span class="recon f-') == 5 * n_s and card.count('<span class="real ') == 5 * 3
    assert card.count("<i class=\"d-") == 3 * 5 * n_s and "unavailable" not in card
    judges = smoke_run["metrics"]["judges"]
    p0 = {j: judges[j]["predictions"][0][0] for j in ("eval", "resnet", "robust")}
    want = ", ".join(f"{j} {'rejected' if p == -1 else p}{' ✓' if p == 0 else ''}" for j, p in p0.items())
    assert f'title="class 0 (label 0): {want}"' in card
    assert '"judges": {' in page.split('<section id="protocols">')[1]
