"""The outbox's gallery (index.html) in a real headless browser, after the real daemon made the results.

Chromium from the distribution (`/usr/bin/chromium`) driven by Playwright with
`executable_path` (Playwright never downloads a browser here). Without them the
browser tests are skipped, saying why; the tests of what the page is built from
(the scan, the job file, the status script) run everywhere.

`HOTFOLDER_GALLERY_SCREENSHOT=docs/gallery.png` also writes the README's screenshot.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from conftest import Root, needs, wait_until
from hotfolder import gallery
from hotfolder.config import Config, load_config
from hotfolder.folders import status as status_file

JOB = 'prompt = "{prompt}"\nwidth = {w}\nheight = {h}\nduration = 0.5\nfps = 16\nsteps = 2\nseed = {seed}\n'
PROMPTS = {
    "fox": ("A red fox trotting through fresh snow at dawn", 7, 96, 64),
    "boat": ("A paper boat drifting down a rainy street", 11, 64, 96),
    "lake": ("A mountain lake at golden hour, camera slowly descending", 42, 64, 64),
}


def _chromium() -> str | None:
    for candidate in (os.environ.get("HOTFOLDER_CHROMIUM"), shutil.which("chromium"), shutil.which("chromium-browser"),
                      "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def _config(root: Root) -> Config:
    return load_config(root.config, root=root.path)


def _drop(root: Root, name: str, prompt: str, seed: int, w: int = 64, h: int = 64) -> None:
    (root.inbox / f"{name}.toml").write_text(JOB.format(prompt=prompt, seed=seed, w=w, h=h))


def _run_once(root: Root, **env: str) -> None:
    run = root.cli("run", "--once", fake=True, env=root.env(**env) if env else None)
    assert run.returncode in (0, 1), run.stdout + run.stderr


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Root:
    """Three results and one failure, made by the real daemon with the fake backend."""
    root = Root(tmp_path_factory.mktemp("gallery"))
    for name, (prompt, seed, w, h) in PROMPTS.items():
        _drop(root, name, prompt, seed, w, h)
    (root.inbox / "typo.toml").write_text('prompt = "A lighthouse in a storm"\nduraton = 3\n')
    _run_once(root)
    assert len(root.results()) == 3 and len(root.failures()) == 1
    gallery.write(_config(root))
    return root


# --- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    needs(sync_api, "Playwright is not installed (it is in the test extra: pip install -e '.[test]')")
    exe = _chromium()
    needs(exe, "no Chromium here (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe)
        yield b
        b.close()


class Page:
    """A page plus every URL it requested: nothing may leave file://."""

    def __init__(self, browser: Any, **options: Any):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **options)
        self.page = self.context.new_page()
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, path: Path) -> Any:
        self.page.goto(path.as_uri())
        self.page.wait_for_function("window.hotfolderRendered !== undefined")
        return self.page

    def close(self) -> None:
        self.context.close()
        outside = [u for u in self.requests if not u.startswith("file://")]
        assert outside == [], f"the page requested something outside file://: {outside}"
        assert self.errors == [], f"the page's script failed: {self.errors}"
        assert self.requests, "no request at all was seen"


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    page = Page(browser)
    yield page
    page.close()


def _cards(page: Any) -> list[str]:
    return page.locator("#grid .card .prompt").all_inner_texts()


def _search(page: Any, text: str) -> None:
    page.fill("#q", text)
    page.press("#q", "Enter")


# --- what a person sees ---------------------------------------------------------------------


def test_every_result_and_the_failure_appear_with_their_prompts(made: Root, tab: Page) -> None:
    page = tab.open(made.outbox / "index.html")
    prompts = _cards(page)
    assert sorted(prompts) == sorted(p for p, *_ in PROMPTS.values())
    assert page.inner_text("#count-videos") == "3" and page.inner_text("#count-failed") == "1"
    # Newest first, as the daemon delivered them.
    metas = sorted((made.metadata(r) for r in made.results()), key=lambda m: m["timings"]["finished"], reverse=True)
    newest_first = [m["prompt"] for m in metas]
    assert prompts == newest_first

    fox = page.locator(".card", has_text="A red fox")
    facts = fox.locator(".facts").inner_text()
    for fact in ("seed 7", "96\u00d764", "preview", "generated"):
        assert fact in facts
    assert "made in" in fox.locator(".meta").inner_text()
    # Poster frames load lazily, relative to the page; the video plays on click.
    img = fox.locator("img")
    assert img.get_attribute("loading") == "lazy" and not img.get_attribute("src").startswith(("/", "file:"))
    fox.locator(".media").hover()
    assert img.get_attribute("src").endswith(".gif")
    fox.locator(".media").click()
    video = page.locator("#player video")
    assert video.get_attribute("src").endswith("fox.mp4")
    page.wait_for_function("document.querySelector('#player video').readyState >= 1")  # the MP4 really loads
    details = page.inner_text("#player .details")
    assert "seed" not in details.lower() or "7" in details
    for label in ("Seed", "Model", "Size", "Length", "Mode", "Sound", "Cache", "Timings"):
        assert label in details
    page.keyboard.press("Escape")

    page.click("#tab-failed")
    failure = page.locator("#failed-list .fail")
    assert failure.count() == 1
    text = failure.inner_text()
    assert "A lighthouse in a storm" in text and "duraton" in text and "typo" in text
    assert failure.locator("pre.error-text").text_content().startswith("This job could not be made")
    assert failure.locator("a", has_text="error.txt").get_attribute("href").startswith("../failed/")
    assert page.is_hidden("#grid")


def test_the_search_box_filters_by_prompt(made: Root, tab: Page) -> None:
    page = tab.open(made.outbox / "index.html")
    _search(page, "fox")
    assert _cards(page) == [PROMPTS["fox"][0]]
    assert page.inner_text("#count-videos") == "1 of 3"
    _search(page, "RAINY paper")  # every word, any case, any order
    assert _cards(page) == [PROMPTS["boat"][0]]
    _search(page, "lighthouse")  # the failure's prompt
    assert _cards(page) == [] and page.is_visible("#empty-videos")
    assert page.inner_text("#count-failed") == "1 of 1"
    _search(page, "")
    assert len(_cards(page)) == 3


def test_run_again_is_a_valid_job_and_a_cache_hit_and_variations_change_the_seed(tmp_path: Path, browser: Any) -> None:
    root = Root(tmp_path)
    prompt, seed, w, h = PROMPTS["fox"]
    _drop(root, "fox", prompt, seed, w, h)
    _run_once(root)
    [first] = root.results()
    assert root.metadata(first)["cache_hit"] is False
    gallery.write(_config(root))

    tab = Page(browser)
    try:
        page = tab.open(root.outbox / "index.html")
        page.click(".card >> text=Run again")
        again = page.input_value("#toml-text")
        assert f"seed = {seed}\n" in again and prompt in again
        page.click("#toml [data-close]")
        page.click(".card >> text=Variations")
        variation = page.input_value("#toml-text")
        assert "seed = " in variation and f"seed = {seed}\n" not in variation
        page.click("#toml-reseed")
        assert page.input_value("#toml-text") != variation
        page.click("#toml-copy")
        wait_until(lambda: page.inner_text("#toml-status"), timeout=5, what="the copy to answer")
    finally:
        tab.close()

    for name, text in (("again", again), ("variation", variation)):
        (tmp_path / f"{name}.toml").write_text(text)
        check = root.cli("validate", str(tmp_path / f"{name}.toml"))
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.startswith("ok ")

    shutil.copy(tmp_path / "again.toml", root.inbox / "again.toml")
    _run_once(root)
    [second] = [r for r in root.results() if r != first]
    meta = root.metadata(second)
    assert meta["cache_hit"] is True, "Run again did not come back from the cache"
    assert (meta["prompt"], meta["seed"]) == (prompt, seed)
    assert meta["cache_key"] == root.metadata(first)["cache_key"]

    gallery.write(_config(root))
    tab = Page(browser)
    try:
        page = tab.open(root.outbox / "index.html")
        assert page.locator("#grid .card").count() == 2
        assert page.locator("#grid .card").first.locator(".hit").inner_text() == "cache hit"
    finally:
        tab.close()


def _status(*, running: dict[str, Any] | None = None, queue: list[dict[str, Any]] | None = None,
            heartbeat: float | None = None, state: str = "running") -> dict[str, Any]:
    beat = time.time() if heartbeat is None else heartbeat
    return {"daemon": {"state": state, "pid": 1, "root": "/somewhere", "heartbeat": "x", "heartbeat_unix": beat,
                       "started": "x", "model_loaded": ["fake", "tiny"]},
            "queue": queue or [], "running": running, "recent": []}


def test_the_live_view_shows_the_running_job_and_then_that_the_daemon_is_not_running(made: Root, tab: Page) -> None:
    config = _config(made)
    running = {"job_id": "j1", "source": "whale.toml", "name": "whale", "prompt": "A whale breaching at sunset",
               "progress": {"stage": "denoise", "step": 4, "total_steps": 10, "percent": 40.0, "eta_s": 12.0}}
    queue = [{"position": i + 1, "job_id": f"q{i}", "source": f"q{i}.toml", "name": f"queued-{i}", "priority": 0}
             for i in range(3)]
    gallery.write_status(config, _status(running=running, queue=queue), force=True)
    page = tab.open(made.outbox / "index.html")
    page.wait_for_function("document.getElementById('live').dataset.state === 'busy'")
    assert "making whale" in page.inner_text("#live-text")
    assert page.is_visible("#now") and "A whale breaching" in page.inner_text("#now")
    assert "step 4 of 10" in page.inner_text("#now-step") and "40%" in page.inner_text("#now-step")
    assert page.locator("#queue li").all_inner_texts() == ["queued-0", "queued-1", "queued-2"]
    assert page.is_hidden("#down-note")

    paused = _status(queue=queue)
    paused["paused"] = "disk full: 10 MB free on the disk of /r; claiming and jobs wait"
    gallery.write_status(config, paused, force=True)
    page.wait_for_function("document.getElementById('live').dataset.state === 'paused'", timeout=8000)
    assert page.inner_text("#live-text") == "Paused: disk full: 10 MB free on the disk of /r"

    # The daemon dies: status.json keeps saying "running", but its heartbeat grows old.
    stale = time.time() - status_file.STALE_S - 5
    gallery.write_status(config, _status(running=running, heartbeat=stale), force=True)
    page.wait_for_function("document.getElementById('live').dataset.state === 'down'", timeout=8000)
    assert "not running" in page.inner_text("#live-text")
    assert page.is_hidden("#now") and "hotfolder run" in page.inner_text("#down-note")

    gallery.write_status(config, _status(heartbeat=time.time(), state="stopped"), force=True)
    page.wait_for_function("/stopped/.test(document.getElementById('live-text').textContent)", timeout=8000)
    assert "not running" in page.inner_text("#live-text")
    (made.outbox / gallery.STATUS_SCRIPT).unlink()  # no status at all: still "not running", no script error
    page.wait_for_timeout(2500)
    assert page.get_attribute("#live", "data-state") == "down"


def test_the_live_view_follows_the_real_daemon_from_running_job_to_result(tmp_path: Path, browser: Any) -> None:
    """What the daemon's hooks do (write_status at each heartbeat, write after each delivery), done here by a
    mirror thread while the real daemon runs a slow job."""
    root = Root(tmp_path)
    config = _config(root)
    gallery.write(config)
    daemon = root.start(fake=True, env=root.env(HOTFOLDER_FAKE_STEP_S="0.4"))
    stop = threading.Event()

    def mirror() -> None:
        known = 0
        while not stop.is_set():
            seen = status_file.read(root.path)
            if seen.status:
                gallery.write_status(config, seen.status)
            if len(root.results()) != known:
                known = len(root.results())
                gallery.write(config)
            stop.wait(0.5)

    thread = threading.Thread(target=mirror, name="gallery-mirror")
    thread.start()
    tab = Page(browser)
    page = tab.page
    try:
        tab.open(root.outbox / "index.html")
        assert page.locator("#grid .card").count() == 0
        (root.inbox / "slow.toml").write_text(JOB.format(prompt="A slow heron lifting off", seed=3, w=64, h=64)
                                              .replace("steps = 2", "steps = 20"))
        page.wait_for_function("document.getElementById('live').dataset.state === 'busy'", timeout=30000)
        assert "making slow" in page.inner_text("#live-text")
        # The delivery rewrites the page; the open page notices (the status names the new page) and reloads.
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 1", timeout=60000)
        assert "A slow heron lifting off" in page.inner_text("#grid")
        page.wait_for_function("document.getElementById('live').dataset.state === 'idle'", timeout=10000)
    finally:
        daemon.terminate()
        daemon.wait(timeout=20)
        try:
            seen = status_file.read(root.path)
            gallery.write_status(config, seen.status, force=True)
            page.wait_for_function("document.getElementById('live').dataset.state === 'down'", timeout=8000)
            assert "not running" in page.inner_text("#live-text")
        finally:
            stop.set()
            thread.join()
            tab.close()


def test_a_prompt_is_shown_as_text_never_run_as_html(tmp_path: Path, browser: Any) -> None:
    root = Root(tmp_path)
    evil = '</script><script>window.pwned=1</script><img src=x onerror="window.pwned=2"> & "quotes" \u2028 done'
    _result(root.outbox, "20260101-120000_evil", "evil", evil, 1)
    gallery.write(_config(root))
    tab = Page(browser)
    try:
        page = tab.open(root.outbox / "index.html")
        assert page.evaluate("window.pwned") is None
        assert _cards(page) == [evil]
        assert page.locator("#grid img").count() == 1  # only the poster, no injected <img>
    finally:
        tab.close()


def test_two_thousand_results_render_quickly_a_page_at_a_time(tmp_path: Path, browser: Any) -> None:
    root = Root(tmp_path)
    config = _config(root)
    poster = _poster(tmp_path / "poster.jpg")
    for i in range(2000):
        ts = time.strftime("%Y%m%d-%H%M%S", time.localtime(1_760_000_000 + i * 60))
        _result(root.outbox, f"{ts}_clip{i}", f"clip{i}", f"Clip number {i}: a drone shot over a forest", i, poster=poster)
    t0 = time.perf_counter()
    gallery.write(config)
    first_write = time.perf_counter() - t0
    _result(root.outbox, "20991231-235959_last", "last", "The last one", 1, poster=poster)
    t0 = time.perf_counter()
    gallery.write(config)  # after one more delivery: only the new folder is read
    rebuild = time.perf_counter() - t0
    size = (root.outbox / "index.html").stat().st_size

    tab = Page(browser)
    try:
        t0 = time.perf_counter()
        page = tab.open(root.outbox / "index.html")
        wall = time.perf_counter() - t0
        rendered_ms = page.evaluate("window.hotfolderRendered")
        assert page.locator("#grid .card").count() == 48
        assert page.inner_text("#count-videos") == "2,001"
        assert _cards(page)[0] == "The last one"
        loaded = len({u for u in tab.requests if u.endswith(".jpg")})
        page.mouse.wheel(0, 20000)
        page.wait_for_function("document.querySelectorAll('#grid .card').length > 48")
        _search(page, "number 1234:")
        assert _cards(page) == ["Clip number 1234: a drone shot over a forest"]
    finally:
        tab.close()
    print(f"\n2,001 results: first write {first_write:.2f} s, rebuild after one delivery {rebuild * 1000:.0f} ms, "
          f"index.html {size / 1e6:.1f} MB; in Chromium: rendered {rendered_ms:.0f} ms after navigation, "
          f"load {wall * 1000:.0f} ms; posters fetched before scrolling: {loaded}")
    assert loaded < 100, "posters must load lazily"
    assert rebuild < 1.0 and rendered_ms < 5000


def test_screenshot_for_the_readme(tmp_path: Path, browser: Any) -> None:
    """Six results as the README shows them (written only when HOTFOLDER_GALLERY_SCREENSHOT names the file)."""
    target = os.environ.get("HOTFOLDER_GALLERY_SCREENSHOT")
    if not target:
        pytest.skip("set HOTFOLDER_GALLERY_SCREENSHOT=docs/gallery.png to write the README's screenshot")
    root = Root(tmp_path)
    jobs = [
        ("harbour", "Fishing boats rocking in a small harbour at dawn, gulls overhead", 1201, 128, 64),
        ("fox", "A red fox trotting through fresh snow, low tracking shot", 7, 64, 128),
        ("lake", "A wide aerial shot of a mountain lake at golden hour, camera slowly descending", 42, 128, 64),
        ("city", "Neon reflections on a rainy city street at night, slow dolly forward", 88, 128, 64),
        ("bloom", "Time-lapse of a cherry blossom branch opening in soft morning light", 5, 96, 96),
    ]
    for name, prompt, seed, w, h in jobs:
        _drop(root, name, prompt, seed, w, h)
    (root.inbox / "storm.toml").write_text('prompt = "A lighthouse in a storm"\nduraton = 3\n')
    _run_once(root)
    harbour = next(r for r in root.results() if r.name.endswith("_harbour"))
    (root.inbox / "harbour.toml").write_text(gallery.job_toml(root.metadata(harbour), name="harbour"))
    _run_once(root)  # six results: the harbour again, now from the cache
    config = _config(root)
    gallery.write(config)
    running = {"job_id": "j", "source": "owl.toml", "name": "owl", "prompt": "An owl turning its head in the moonlight",
               "progress": {"stage": "denoise", "step": 6, "total_steps": 10, "percent": 60.0, "eta_s": 9.0}}
    gallery.write_status(config, _status(running=running, queue=[{"position": 1, "job_id": "q", "source": "q.toml",
                                                                  "name": "sunrise", "priority": 0}]), force=True)
    tab = Page(browser, color_scheme="light")
    try:
        page = tab.open(root.outbox / "index.html")
        page.wait_for_function("document.getElementById('live').dataset.state === 'busy'")
        page.wait_for_function("[...document.images].every(i => i.complete)")
        Path(target).write_bytes(page.screenshot(full_page=True))  # (path= would leave an executor thread)
    finally:
        tab.close()


# --- what the page is built from (no browser) ----------------------------------------------


def test_run_again_job_file_round_trips_through_the_job_parser(made: Root) -> None:
    from hotfolder.job.spec import parse

    config = _config(made)
    for result in made.results():
        meta = made.metadata(result)
        text = gallery.job_toml(meta, name=meta["outputs"]["video"][:-4])
        path = made.path.parent / "again" / "x.toml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        [spec] = parse(path, config)
        for key in ("prompt", "negative_prompt", "seed", "width", "height", "num_frames", "fps", "steps", "mode",
                    "model"):
            assert getattr(spec, key) == meta[key], key


def test_the_scan_links_relatively_skips_what_is_not_a_result_and_reuses_what_it_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hotfolder.gallery import read

    parsed: list[str] = []
    real = read._read_result
    monkeypatch.setattr(read, "_read_result", lambda folder: parsed.append(folder.name) or real(folder))
    root = Root(tmp_path)
    _result(root.outbox, "20260101-120000_fox 2", "fox", "A fox", 1)
    _result(root.outbox, "20260101-120001_caf\u00e9 #1", "caf\u00e9 #1", "A caf\u00e9", 2)
    (root.outbox / "20260101-120002_broken").mkdir()
    (root.outbox / "20260101-120002_broken" / "broken.json").write_text("{not json")
    (root.outbox / "somebody's folder").mkdir()
    (root.outbox / ".hidden").mkdir()
    (root.outbox / "notes.txt").write_text("hello")
    found = gallery.scan(root.outbox, root.failed)
    assert [e["name"] for e in found.results] == ["caf\u00e9 #1", "fox"]  # newest first
    cafe, fox = found.results
    assert fox["video"] == "20260101-120000_fox%202/fox.mp4" and fox["href"] == "20260101-120000_fox%202/"
    assert cafe["jpg"] == "20260101-120001_caf%C3%A9%20%231/caf%C3%A9%20%231.jpg"

    assert len(parsed) == 4  # two results, a broken one, somebody's folder (hidden names: never opened)
    again = gallery.scan(root.outbox, root.failed)
    assert again.token == found.token and again.results == found.results
    assert len(parsed) == 4, "an unchanged folder was read again"
    meta = root.outbox / "20260101-120000_fox 2" / "fox.json"
    data = json.loads(meta.read_text())
    data["prompt"] = "A changed fox"
    tmp = meta.with_name(".fox.json.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, meta)  # how every writer in hotfolder rewrites a file: the folder's mtime changes
    changed = gallery.scan(root.outbox, root.failed)
    assert changed.token != found.token and changed.results[1]["prompt"] == "A changed fox"
    assert parsed[4:] == ["20260101-120000_fox 2"]


def test_write_raises_only_oserror_and_skips_an_unchanged_page(tmp_path: Path) -> None:
    root = Root(tmp_path)
    config = _config(root)
    _result(root.outbox, "20260101-120000_fox", "fox", "A fox", 1)
    page = gallery.write(config)
    assert page == root.outbox / "index.html" and (root.outbox / gallery.STATUS_SCRIPT).is_file()
    before = page.stat().st_mtime_ns
    time.sleep(0.01)
    gallery.write(config)
    assert page.stat().st_mtime_ns == before  # nothing changed: not rewritten (a synced outbox stays quiet)

    shutil.rmtree(root.outbox)
    with pytest.raises(OSError):
        gallery.write(config)
    with pytest.raises(OSError):
        gallery.write_status(config, _status())


def test_the_status_script_is_small_relative_and_rewritten_only_when_needed(tmp_path: Path) -> None:
    root = Root(tmp_path)
    config = _config(root)
    status = _status(running={"job_id": "j", "source": "a.toml", "name": "a", "prompt": "p",
                              "progress": {"stage": "denoise", "step": 1, "total_steps": 2, "percent": 50.0}})
    status["recent"] = [{"job_id": "x", "source": "a.toml", "status": "done", "finished": "t",
                         "path": str(root.outbox / "20260101-120000_a b" / "a b.mp4")},
                        {"job_id": "y", "source": "b.toml", "status": "failed", "finished": "t",
                         "path": str(root.failed / "20260101-120000_b" / "error.txt")}]
    path = gallery.write_status(config, status, force=True)
    text = path.read_text()
    assert text.startswith("window.hotfolderStatus = ") and text.endswith(";\n")
    data = json.loads(text[len("window.hotfolderStatus = "):-2])
    assert data["running"]["progress"]["percent"] == 50.0
    assert [r["href"] for r in data["recent"]] == ["20260101-120000_a%20b/a%20b.mp4",
                                                   "../failed/20260101-120000_b/error.txt"]
    assert "/somewhere" not in text and str(root.path) not in text  # no absolute paths
    assert gallery.write_status(config, {**status, "daemon": {**status["daemon"], "heartbeat_unix": time.time()}}) is None
    status["running"]["progress"]["percent"] = 60.0
    assert gallery.write_status(config, status) == path


def test_the_gallery_command_writes_and_opens_the_page(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hotfolder.commands import gallery as command
    from hotfolder.errors import UsageError

    root = Root(tmp_path)
    opened: list[str] = []
    assert command.command(_config(root), open_page=True, opener=opened.append) == 0
    page = root.outbox / "index.html"
    assert capsys.readouterr().out.strip() == str(page) and opened == [page.as_uri()]
    with pytest.raises(UsageError, match="no outbox"):
        command.command(load_config(root.config, root=tmp_path / "nowhere"))


# --- helpers --------------------------------------------------------------------------------


def _poster(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (64, 36), (40, 90, 60)).save(path, quality=80)
    return path


def _result(outbox: Path, folder: str, name: str, prompt: str, seed: int, *, poster: Path | None = None) -> Path:
    """A result folder as the daemon writes it (metadata, an empty MP4, a poster) without running it."""
    d = outbox / folder
    d.mkdir(parents=True)
    (d / f"{name}.mp4").write_bytes(b"")
    if poster is not None:
        os.link(poster, d / f"{name}.jpg")
    else:
        (d / f"{name}.jpg").write_bytes(b"")
    stamp = folder.split("_", 1)[0]
    finished = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T{stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}.000"
    meta = {"job_id": f"id-{seed}", "source": f"{name}.toml", "status": "done", "prompt": prompt, "negative_prompt": "",
            "format": "linkedin", "mode": "preview", "duration": 5.0, "width": 640, "height": 352, "num_frames": 121,
            "fps": 24.0, "seed": seed, "seed_random": False, "steps": 10, "backend": "diffusers", "model": "ltx-2",
            "model_label": "ltx-2", "device": "cuda", "audio": "generated", "attachments": [], "cache_hit": False,
            "adjustments": [], "timings": {"finished": finished, "load_s": 0.0, "generate_s": 30.1, "encode_s": 1.2,
                                          "total_s": 31.5, "wait_s": 0.1},
            "outputs": {"video": f"{name}.mp4", "thumbnail": f"{name}.jpg", "job": f"{name}.toml",
                        "metadata": f"{name}.json", "log": f"{name}.log"}}
    (d / f"{name}.json").write_text(json.dumps(meta))
    return d


def _listed(root: Root) -> set[str]:
    """The prompts of the results the page lists (its data block, as the page's script reads it)."""
    try:
        text = (root.outbox / "index.html").read_text()
    except OSError:
        return set()
    return {p for p in (f"burst job {n}" for n in range(8)) if f'"{p}"' in text}


def test_a_burst_of_results_is_all_on_the_page_the_last_rewrite_is_never_skipped(tmp_path: Path) -> None:
    """The daemon rewrites the page at most once a second while jobs run (with thousands of results a rewrite
    costs tens of ms), and at once when it is idle: after a burst, every result is on the page."""
    root = Root(tmp_path)
    for n in range(4):
        _drop(root, f"burst{n}", f"burst job {n}", n)
    run = root.cli("run", "--once", fake=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert _listed(root) == {f"burst job {n}" for n in range(4)}  # at the stop, whatever the timing
    daemon = root.start(fake=True)
    try:
        for n in range(4, 8):
            _drop(root, f"burst{n}", f"burst job {n}", n)
        wait_until(lambda: len(root.results()) == 8, what="the second burst")
        wait_until(lambda: _listed(root) == {f"burst job {n}" for n in range(8)}, what="the page at idle")
    finally:
        daemon.terminate()
        daemon.wait(timeout=15)
