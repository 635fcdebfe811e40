"""A built wheel carries the plugins and the YAML configs (package data) and works on its own."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_built_wheel_ships_plugins_and_configs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps",
                        "--no-build-isolation", "-q", "-w", str(tmp_path / "dist")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (wheel,) = (tmp_path / "dist").glob("mi_bench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("mi_bench/attacks/gmi.py", "mi_bench/defenses/bido.py",
                     "mi_bench/configs/preset/quick.yaml", "mi_bench/configs/defense/bido-coco.yaml"):
        assert expected in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import mi_bench, sys; from mi_bench.config import compose; "
            "c = compose(['defense=bido-coco', 'attack=gmi', 'preset=paper']); "
            "assert mi_bench.__file__.startswith(sys.argv[1]), mi_bench.__file__; "
            "print(c.defense.measure, c.attack.gan_width)")
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["coco", "64"]
