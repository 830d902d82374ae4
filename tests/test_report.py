"""build/report.html: numbers with units, captions, takeaways, the merge with the last full run, and the
rendered page in a real headless Chromium (summary table, every figure loaded, no broken link)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import nbformat
import pytest

from nki_moe.paths import ROOT
from nki_moe.report import caption, format_number, sig3, takeaways, write_report

INSTALL = (
    "chromium is missing: tests/test_report.py renders the report in headless Chromium; install it with "
    "`sudo apt-get install -y chromium` (scripts/env.sh installs it when run as root)"
)
# The page's only external link; every other href must resolve inside the build folder.
EXTERNAL = "https://ui.perfetto.dev"
PROBE = """<script>
window.addEventListener("load", () => {
  const all = (css) => [...document.querySelectorAll(css)];
  const probe = {
    images: all("img").map((i) => ({src: i.getAttribute("src"), width: i.naturalWidth})),
    summary: all("#summary-table tbody tr").map((r) => [...r.cells].map((c) => c.textContent.trim())),
    hrefs: all("[href]").map((a) => a.getAttribute("href")),
    ids: all("[id]").map((e) => e.id),
  };
  const pre = document.createElement("pre");
  pre.id = "nki-probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


@pytest.mark.parametrize(
    "x, text",
    [(6012.6, "6,010"), (953.07, "953"), (22.16, "22.2"), (9.996, "10.0"), (0.033898, "0.0339"), (0, "0")],
)
def test_sig3(x, text):
    assert sig3(x) == text


@pytest.mark.parametrize(
    "path, value, text",
    [
        (("decode_bytes_at_context",), 6146654208, "6.15 GB"),
        (("kv_cache_bytes_per_token",), 98304, "98.3 kB"),
        (("final", "trn2_T1", "latency_us"), 9.285162758620691, "9.29 µs"),
        (("final", "trn2_T640", "pct_roofline"), 32.65625832274462, "32.7 %"),
        (("decode_floor_ms", "trn2"), 2.1195359337931032, "2.12 ms"),
        (("hbm_gbps",), 2880.4, "2,880 GB/s"),
        (("decode_tokens_per_s",), 94.71, "94.7 tokens/s"),
        (("cost_model_median_abs_error",), 0.10946177423151615, "10.9 %"),
        (("measured_over_floor", "trn3 XLA TKG"), 11.455500442558815, "11.5×"),
        (("prefill_flop_per_byte", "640"), 60.440871483340295, "60.4 FLOP/B"),
        (("params_total",), 30532122624, "30.5 billion"),
        (("lm_head_columns",), 151936, "151,936"),
        (("first_place_scores",), [35.47525416999475, 28.967737129179703], "35.5, 29.0"),
        (("cost_model_known_misses",), [], "none"),
    ],
)
def test_numbers_get_units_and_three_significant_figures(path, value, text):
    assert format_number(path, value) == text


def test_every_committed_figure_has_a_caption():
    stems = sorted(p.stem for p in (ROOT / "figures").glob("*.png"))
    assert stems, "no committed figures/*.png"
    for stem in stems:
        source, text = caption(stem, "trn2")
        assert re.search(r"estimate|measurement|counted", source), f"{stem}: caption says no source: {source}"
        assert len(text) > 40, f"{stem}: caption too short: {text!r}"
    assert "trn3" in caption("02_projection_matmul_roofline", "trn3")[0], "the chip follows the run's target"


def test_a_figure_without_caption_is_named():
    with pytest.raises(KeyError, match="99_unknown.*_CAPTIONS"):
        caption("99_unknown")


def _executed(path: Path, printed: str, heading: str = "## Takeaways") -> Path:
    """A tiny executed notebook: a Takeaways section (markdown + printing cells), then another section."""
    v4 = nbformat.v4
    cells = [
        v4.new_markdown_cell("# 01 · a notebook"),
        v4.new_markdown_cell(f"{heading}\nPrinted from the sweep (`estimates`)."),
        v4.new_code_cell(
            "print(...)",
            outputs=[
                v4.new_output("stream", name="stdout", text=printed),
                v4.new_output("stream", name="stderr", text="a warning\n"),
                v4.new_output("execute_result", data={"text/plain": "PosixPath('/abs/results.json')"}),
            ],
        ),
        v4.new_code_cell("results.record(...)"),
        v4.new_markdown_cell("## Appendix"),
        v4.new_code_cell(
            "print(1)", outputs=[v4.new_output("stream", name="stdout", text="not a takeaway\n")]
        ),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(v4.new_notebook(cells=cells), path)
    return path


def test_takeaways_are_the_printed_sentences_under_the_heading(tmp_path):
    nb = _executed(tmp_path / "a.ipynb", "rmsnorm_v3 trn2 T=1: 9.29 µs (estimated)\n")
    assert takeaways(nb) == (
        "Printed from the sweep (`estimates`).",
        ["rmsnorm_v3 trn2 T=1: 9.29 µs (estimated)"],
    )
    assert takeaways(_executed(tmp_path / "b.ipynb", "x\n", heading="## Results")) == ("", [])


@pytest.fixture()
def last_full_run(tmp_path, monkeypatch) -> Path:
    """NKI_MOE_OUT holding the committed figures and results as the last full run; returns its build/."""
    out = tmp_path / "out"
    monkeypatch.setenv("NKI_MOE_OUT", str(out))
    for kind, pattern in (("figures", "*.png"), ("results", "*.json")):
        (out / kind).mkdir(parents=True)
        for path in (ROOT / kind).glob(pattern):
            shutil.copy(path, out / kind / path.name)
    return out / "build"


def _outcome(stem: str, status: str, executed: Path, **failure) -> dict:
    return {"notebook": stem, "status": status, "seconds": 1.5, "executed": str(executed), **failure}


def _section(page: str, stem: str) -> str:
    return page.split(f"<section id='{stem}'>")[1].split("</section>")[0]


def _summary_rows(page: str) -> dict[str, str]:
    body = page.split("<table id='summary-table'>")[1].split("</table>")[0]
    return {re.search(r"<td>(.*?)</td>", r).group(1): r for r in re.findall(r"<tr><td>.*?</tr>", body)}


def test_a_partial_smoke_run_is_merged_with_the_last_full_run(last_full_run):
    smoke = last_full_run / "smoke"
    (smoke / "results").mkdir(parents=True)
    fresh = {"trn2_T128": {"latency_us": 1.234, "pct_roofline": 50.0, "roofline_us": 0.617}}
    (smoke / "results" / "01_rmsnorm.json").write_text(
        json.dumps(
            {
                "final": fresh,
                "final_version": "v3",
                "ops": {
                    "add_rmsnorm": {
                        "final_version": "v3",
                        "final": {
                            "trn2_T128": {"latency_us": 2.345, "pct_roofline": 40.0, "roofline_us": 0.938}
                        },
                    }
                },
                "run": {"notebook": "01_rmsnorm", "size": "smoke"},
            }
        )
    )
    run = {
        "smoke": True,
        "size": "smoke",
        "variant": "smoke",
        "target": None,
        "backend": "sim",
        "outcomes": [_outcome("01_rmsnorm", "ok", smoke / "executed" / "01_rmsnorm.ipynb")],
        "skipped": [],
    }
    page = write_report(smoke, run).read_text()
    rows = _summary_rows(page)
    assert "1.23 µs" in rows["rmsnorm"] and "passed" in rows["rmsnorm"], "01 ran: this run's smoke numbers"
    assert "2.35 µs" in rows["add_rmsnorm"] and "1.23 µs" not in rows["add_rmsnorm"], (
        "a second op: ops.<name>"
    )
    assert "trn2 · T = 128" in page and "trn2 · T = 640" in page
    full = json.loads((ROOT / "results" / "03_router_top8.json").read_text())["final"]["trn2_T1"]
    assert format_number(("latency_us",), full["latency_us"]) in rows["router"], "03: the last full run's"
    assert "stale" in rows["router"] and "stale" in _section(page, "03_router_top8")
    assert "from this run" in _section(page, "01_rmsnorm")
    # no executed copy of 01: its recorded numbers stand in for the takeaways, shown open
    assert "<details open>" in _section(page, "01_rmsnorm") and "Takeaways" not in _section(
        page, "01_rmsnorm"
    )
    assert "fig-01_rmsnorm_sweep" not in _section(page, "01_rmsnorm"), "the smoke run drew no figures"


def _browser() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail(INSTALL)  # never a skip: CI must render the report
    return exe


def _render(page: Path, profile: Path) -> dict:
    """Open ``page`` (with the probe script injected) in headless Chromium; return the probe's findings."""
    probed = page.with_name(f"{page.stem}.probe.html")
    probed.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    cmd = [
        _browser(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: a file:// page needs no network
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probed.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="nki-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium rendered no probe (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def _broken(probe: dict, page: Path) -> list[str]:
    """Images that did not load and hrefs that lead nowhere (missing file, missing #id, foreign site)."""
    bad = [f"image {i['src']} did not load" for i in probe["images"] if i["width"] == 0]
    for href in probe["hrefs"]:
        if href.startswith("#"):
            ok = href[1:] in probe["ids"]
        elif re.match(r"^[a-z]+:", href):
            ok = href.startswith(EXTERNAL)
        else:
            ok = (page.parent / unquote(href.split("#")[0])).is_file()
        bad += [] if ok else [f"link {href}"]
    return bad


def test_the_link_checker_finds_broken_images_and_links(tmp_path):
    page = tmp_path / "bad.html"
    shutil.copy(ROOT / "figures" / "00_roofline.png", tmp_path / "ok.png")
    page.write_text(
        "<html><body id='top'><img src='ok.png'><img src='missing.png'><a href='#top'>a</a>"
        "<a href='#nowhere'>b</a><a href='ok.png'>c</a><a href='gone.html'>d</a>"
        "<a href='https://example.com'>e</a></body></html>"
    )
    assert _broken(_render(page, tmp_path / "profile"), page) == [
        "image missing.png did not load",
        "link #nowhere",
        "link gone.html",
        "link https://example.com",
    ]


def test_report_renders_in_headless_chromium(last_full_run, tmp_path):
    build = last_full_run
    executed = _executed(build / "executed" / "01_rmsnorm.ipynb", "rmsnorm_v3 (LNC=2) trn2 T=1: 9.29 µs\n")
    (build / "traces").mkdir(parents=True)
    (build / "traces" / "rmsnorm_v3_T640_trn2.json").write_text('{"traceEvents": []}')
    run = {
        "smoke": False,
        "size": "full",
        "variant": "",
        "target": None,
        "backend": "sim",
        "outcomes": [
            _outcome("01_rmsnorm", "ok", executed),
            _outcome(
                "02_projection_matmul",
                "failed",
                build / "executed" / "02_projection_matmul.ipynb",
                failed_cell="cell 7: op.step('v0')",
                error="AssertionError",
            ),
        ],
        "skipped": ["03_router_top8"],
    }
    page = write_report(build, run)
    probe = _render(page, tmp_path / "profile")

    rows = {r[0]: r for r in probe["summary"]}
    assert set(rows) >= {"rmsnorm", "add_rmsnorm", "matmul: q", "matmul: lm_head", "router"}, rows
    final = json.loads((ROOT / "results" / "01_rmsnorm.json").read_text())["final"]
    assert rows["rmsnorm"][:4] == [
        "rmsnorm",
        "v3",
        format_number(("latency_us",), final["trn2_T1"]["latency_us"]),
        format_number(("pct_roofline",), final["trn2_T1"]["pct_roofline"]),
    ]
    assert rows["rmsnorm"][-2] == "passed" and rows["matmul: q"][-2].startswith("failed")
    assert rows["router"][-2].startswith("stale")
    assert len(probe["images"]) == len(list((ROOT / "figures").glob("*.png")))
    assert any(h.endswith("traces/rmsnorm_v3_T640_trn2.json") for h in probe["hrefs"])
    assert any(h.endswith("html/01_rmsnorm.html") for h in probe["hrefs"])
    assert _broken(probe, page) == []
    text = page.read_text()
    assert "rmsnorm_v3 (LNC=2) trn2 T=1: 9.29 µs" in _section(text, "01_rmsnorm"), "the printed takeaways"
    assert "6146654208" not in text and "6.15 GB" in text, "byte counts in GB, not raw integers"
