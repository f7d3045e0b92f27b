"""report.html: built by a real run on a small corpus, then opened in headless Chromium with no
network. Chromium comes from the system package manager (`.ci/run` installs it); without it these
browser tests skip on a developer's machine and fail in CI (CI is set there)."""

import copy
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write
from feedback_nlp.cli import main
from feedback_nlp.html_report import render_html
from feedback_nlp.pipeline import run_batch

ROWS = [
    # (lang, channel, segment, nps, text)
    ("it", "phone", "boomer", 2, "Il router doveva arrivare lunedì e dopo dieci giorni non è ancora arrivato."),
    ("it", "email", "gen_x", 1, "Mi avete addebitato due volte il canone di novembre, voglio il rimborso."),
    ("it", "phone", "boomer", 3, "Cinquanta minuti di attesa al telefono e poi la chiamata è caduta."),
    ("it", "chat", "gen_z", 9, "L'app funziona benissimo, vedo subito i consumi."),
    ("it", "social", "gen_z", 4, "Il tecnico non si è presentato all'appuntamento per l'installazione."),
    ("it", "email", "millennial", 10, "La fibra va velocissima, nessun problema da mesi."),
    ("en", "phone", "boomer", 2, "The router was supposed to arrive on Monday and ten days later it still has not come."),
    ("en", "email", "gen_x", 0, "You charged me twice for November, I want my money back."),
    ("en", "phone", "boomer", 3, "Fifty minutes on hold and then the call dropped."),
    ("en", "chat", "gen_z", 9, "The app works great, I can see my data usage straight away."),
    ("en", "social", "gen_z", 4, "The technician never showed up for the installation appointment."),
    ("en", "email", "millennial", 10, "The fibre is really fast, no problems for months."),
    ("es", "phone", "boomer", 2, "El router tenía que llegar el lunes y diez días después todavía no ha llegado."),
    ("es", "email", "gen_x", 1, "Me cobrasteis dos veces noviembre, quiero que me devolváis el dinero."),
    ("es", "phone", "boomer", 3, "Cincuenta minutos esperando al teléfono y luego se cortó la llamada."),
    ("es", "chat", "gen_z", 10, "La app funciona genial, veo mi consumo de datos enseguida."),
    ("es", "social", "gen_z", 5, "El técnico no se presentó a la cita de instalación."),
    ("es", "email", "millennial", 9, "La fibra va rapidísima, ningún problema desde hace meses."),
]


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if exe is None or sync_playwright is None:
        why = "chromium (apt-get install chromium)" if exe is None else "playwright (pip install playwright)"
        if os.environ.get("CI"):
            pytest.fail(f"{why} is required in CI for the report's browser tests")
        pytest.skip(f"{why} not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=[
            "--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND", "--disable-background-networking",
            "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Page:
    """A page that records console errors, uncaught errors, dialogs and any non-file request."""

    def __init__(self, browser, path: Path) -> None:
        self.errors, self.requests, self.dialogs = [], [], []
        self.page = browser.new_page(viewport={"width": 1600, "height": 1100})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

        def route(r):
            if r.request.url.startswith("file:"):
                r.continue_()
            else:
                self.requests.append(r.request.url)
                r.abort()

        self.page.route("**/*", route)
        self.page.goto(path.resolve().as_uri())
        self.page.wait_for_selector("body[data-rendered=true]", timeout=30000)

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text().strip()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, settings, columns, journey, _model, embedder):
    d = tmp_path_factory.mktemp("report")
    lines = ["id,channel,segment,source,nps,text"]
    for i, (lang, channel, segment, nps, text) in enumerate(ROWS):
        lines.append(f'{i},{channel},{segment},survey,{nps},"{text}"')
    p = write(d / "in" / "survey.csv", "\n".join(lines) + "\n")
    run_batch([p], journey=journey, settings=settings.replace(driver_min_items=3), columns=columns, model=_model,
              embedder=embedder, out_dir=d / "out", quiet=True)
    return d / "out"


@pytest.fixture(scope="module")
def jm(run_dir):
    return json.loads((run_dir / "journey_map.json").read_text(encoding="utf-8"))


def test_html_report_run_writes_report_cells_themes_and_drivers(run_dir, jm):
    assert (run_dir / "report.html").stat().st_size > 1_000_000  # Plotly inline
    assert (run_dir / "cells.csv").is_file()
    assert any(st["themes"] for st in jm["stages"])
    for st in jm["stages"]:
        for t in st["themes"]:
            assert t["stage"] == st["id"] and 0 < t["share"] <= 1 and t["units"] >= 1
    assert jm["key_drivers"]["nps"]["items"] == len(ROWS)
    assert {r["stage"] for r in jm["key_drivers"]["nps"]["stages"]} == {st["id"] for st in jm["stages"]}


def test_html_report_opens_with_every_stage_and_score_and_no_errors(browser, run_dir, jm, tmp_path):
    page = Page(browser, run_dir / "report.html")
    assert page.errors == [] and page.requests == [] and page.dialogs == []
    for st in jm["stages"]:
        card = f"#stage-{st['id']}"
        assert page.text(f"{card} h3") == st["name"]
        pain = st["scores"]["pain"]
        assert page.text(f"{card} [data-role=pain]") == (f"{pain:.0f}" if pain is not None else "-")
    assert page.page.locator("#heat-channel .main-svg").count() > 0
    assert page.page.locator("#heat-segment .main-svg").count() > 0
    assert page.page.locator("#drivers-plot .main-svg").count() > 0
    figures = page.text("#run-figures")
    c = jm["run"]["counts"]
    assert f"{c['rows_read']}\nrows read" in figures and "unassigned" in figures
    assert jm["run"]["model_id"] in page.text("header")
    shot = tmp_path / "report.png"
    page.page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    page.page.close()


def test_html_report_filters_recompute_scores_in_the_page(browser, run_dir, jm):
    page = Page(browser, run_dir / "report.html")
    before = {st["id"]: page.text(f"#stage-{st['id']} [data-role=units]") for st in jm["stages"]}
    page.page.select_option("#f-lang", label=page.page.locator("#f-lang option", has_text="(it)").inner_text())
    after = {st["id"]: page.text(f"#stage-{st['id']} [data-role=units]") for st in jm["stages"]}
    assert after != before
    assert sum(int(v) for v in after.values()) < sum(int(v) for v in before.values())
    assert "Filtered" in page.text("#filter-note")
    page.page.click("#f-reset")
    assert {st["id"]: page.text(f"#stage-{st['id']} [data-role=units]") for st in jm["stages"]} == before
    assert page.errors == [] and page.requests == []
    page.page.close()


EVIL = ['<script>alert("x")</script> the router is late',
        '</script><script>alert(2)</script><img src=x onerror=alert(3)>',
        '"}]}\u2028\u2029\'; alert(4); // {{ 7*7 }} <!--']


def _evil_map(jm):
    jm = copy.deepcopy(jm)
    st = next(s for s in jm["stages"] if s["themes"])
    for i, text in enumerate(EVIL):
        st["quotes"].insert(0, {"text": text, "lang": "en", "item_id": f"evil{i}", "channel": "<b>x</b>",
                                "segment": None, "p_negative": 0.9})
    t = st["themes"][0]
    t["name"] = EVIL[1]
    t["quotes"] = [{"text": text, "lang": "en", "item_id": f"evil{i}", "channel": "social", "segment": None,
                    "source": "social"} for i, text in enumerate(EVIL)]
    jm["journey"]["name"] = "<i>Acme</i>"
    return jm, st["id"]


def test_html_report_escapes_untrusted_text(jm):
    evil, _ = _evil_map(jm)
    html = render_html(evil)
    assert "<script>alert" not in html and "<img src=x" not in html and "<i>Acme</i>" not in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert html.count("</script>") == 3  # the data block, Plotly, the page's own script
    data = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S).group(1)
    assert "<" not in data  # tojson escapes < > & ' so nothing in the data can close the element
    assert json.loads(data)["stages"][0]["name"] == evil["stages"][0]["name"]


def test_html_report_untrusted_text_stays_text_in_the_browser(browser, jm, tmp_path):
    evil, stage = _evil_map(jm)
    path = tmp_path / "evil.html"
    path.write_text(render_html(evil), encoding="utf-8")
    page = Page(browser, path)
    assert page.dialogs == [] and page.errors == [] and page.requests == []
    shown = page.text(f"#stage-{stage} .themes-mini")
    assert "alert(2)" in shown and "<script>" in shown
    assert page.page.locator("img").count() == 0
    page.page.close()


def test_html_report_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text(encoding="utf-8")
    assert not re.search(r"<(script|img|iframe)[^>]*\ssrc=", html, re.I)
    assert not re.search(r"<link[^>]*href=\"(?!data:)", html, re.I)
    assert "default-src 'none'" in html  # the page itself forbids network requests


def test_html_report_cli_rerenders_html_and_markdown(run_dir, tmp_path):
    (run_dir / "report.html").unlink()
    res = CliRunner().invoke(main, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    assert (run_dir / "report.html").stat().st_size > 1_000_000
    res = CliRunner().invoke(main, ["report", str(run_dir), "--format", "md"])
    assert res.exit_code == 0 and res.output.startswith("# ")
    assert "## Key drivers (NPS" in res.output
    out = tmp_path / "r.md"
    res = CliRunner().invoke(main, ["report", str(run_dir), "--format", "md", "--out", str(out)])
    assert res.exit_code == 0 and out.read_text(encoding="utf-8").startswith("# ")


def test_html_report_without_cells_still_renders_and_says_why(run_dir, jm, tmp_path):
    html = render_html(jm, None)
    assert "Filters need cells.csv" in html
    for st in jm["stages"]:
        assert f'id="stage-{st["id"]}"' in html


def test_html_report_cli_bad_run_dir(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "[E600]" in res.output
    write(tmp_path / "journey_map.json", "{not json")
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 1 and "[E702]" in res.output and "journey_map.json" in res.output
