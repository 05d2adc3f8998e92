"""The ranking widget in a real browser: JupyterLab in headless Chromium, driven by selenium, runs notebook 02
up to the widget, ranks one prompt by mouse (a card's text and its button) and one by keys, and the rankings
file on disk must hold exactly those two rankings.

The unit tests (tests/test_widget.py) drive the widget from Python; only a browser shows that the clicks and
keys reach the kernel through ipywidgets' and ipyevents' front ends. Needs Debian's `chromium` and
`chromium-driver` and Python's `selenium` (the dev extra; .ci/run installs the two packages with apt-get);
skips, saying which is missing, where they are not there. About 20 s on 2 cores (one of them busy with another job).
"""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_rankings.ipynb"
N_WIDGET = 2  # prompts in the widget: one ranked by mouse, one by keys
TIMEOUT = 150  # seconds to wait for the widget: kernel start, imports, sampling (the SFT model is made beforehand)


def browser_or_skip():
    """(chromium, chromedriver) paths, or a skip that says what is missing and how to install it."""
    missing = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("Python's selenium (pip install -e '.[dev]')")
    for module in ("jupyterlab", "ipyevents"):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"Python's {module}")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    chromedriver = shutil.which("chromedriver")
    if chromium is None:
        missing.append("a Chromium browser (apt-get install chromium)")
    if chromedriver is None:
        missing.append("chromedriver (apt-get install chromium-driver)")
    if missing:
        pytest.skip("the browser test of the ranking widget needs " + ", ".join(missing))
    return chromium, chromedriver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def notebook_up_to_the_widget(folder: Path) -> Path:
    """A copy of notebook 02 cut after the widget's cell, without outputs or saved widgets, N_WIDGET prompts."""
    nb = json.loads(NOTEBOOK.read_text())
    last = next(i for i, c in enumerate(nb["cells"]) if "RankingWidget(items" in "".join(c["source"]))
    nb["cells"] = nb["cells"][:last + 1]
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        source = "".join(cell["source"])
        if "N_WIDGET = 12" in source:
            cell["source"] = source.replace("N_WIDGET = 12", f"N_WIDGET = {N_WIDGET}")
    nb["metadata"].pop("widgets", None)
    path = folder / NOTEBOOK.name
    path.write_text(json.dumps(nb))
    return path


def start_jupyterlab(folder: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab serving `folder`, with settings of its own: no news or update checks, no toasts."""
    settings = folder / ".lab" / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False, "doNotDisturbMode": True}))
    env = dict(os.environ, RLHF_LAB_FAST="1", RLHF_LAB_RUNS=str(folder / "runs"),
               JUPYTER_CONFIG_DIR=str(folder / ".lab" / "config"), JUPYTER_RUNTIME_DIR=str(folder / ".lab" / "runtime"),
               MPLBACKEND="module://matplotlib_inline.backend_inline")
    log = open(folder / ".lab" / "server.log", "w")
    return subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}", "--allow-root",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
         f"--LabApp.user_settings_dir={folder / '.lab' / 'settings'}",
         f"--LabApp.workspaces_dir={folder / '.lab' / 'workspaces'}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)


def server_log(folder: Path) -> str:
    return (folder / ".lab" / "server.log").read_text()[-3000:]


def wait_for_server(server: subprocess.Popen, url: str, folder: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.poll() is not None:
            pytest.fail(f"JupyterLab exited with code {server.returncode}:\n{server_log(folder)}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {timeout} s:\n{server_log(folder)}")


def stop_jupyterlab(server: subprocess.Popen, base: str, token: str) -> None:
    """Shut the server down through its API (which shuts down the kernel too), else terminate it."""
    try:
        request = urllib.request.Request(f"{base}/api/shutdown", method="POST",
                                         headers={"Authorization": f"token {token}"})
        urllib.request.urlopen(request, timeout=10).close()
        server.wait(timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.mark.browser
@pytest.mark.slow
def test_ranking_widget_by_mouse_and_keys_in_jupyterlab(tmp_path):
    chromium, chromedriver = browser_or_skip()
    from selenium import webdriver
    from selenium.common.exceptions import (NoSuchElementException, StaleElementReferenceException, TimeoutException,
                                            WebDriverException)
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from rlhf_lab import pipeline
    from rlhf_lab.loading import load_prompts
    from rlhf_lab.rankings import RankingStore

    notebook = notebook_up_to_the_widget(tmp_path)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    server = start_jupyterlab(tmp_path, port, token)
    driver = None
    try:
        # The quick SFT model the notebook would otherwise train in its kernel, made while JupyterLab starts.
        # One thread: beside JupyterLab (and on a busy CI machine) two threads mostly wait for each other.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pipeline.ensure_sft(tmp_path / "runs", fast=True)
        finally:
            torch.set_num_threads(threads)
        wait_for_server(server, f"{base}/api/status?token={token}", tmp_path)

        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1400,1000", f"--user-data-dir={tmp_path / '.chromium'}"):
            options.add_argument(argument)
        try:
            driver = webdriver.Chrome(service=Service(executable_path=chromedriver), options=options)
        except WebDriverException as e:
            pytest.skip(f"headless Chromium did not start ({chromium}, {chromedriver}): {e.msg or e}".strip())
        driver.get(f"{base}/lab/tree/{notebook.name}?token={token}")

        def wait(condition, what: str, timeout: float = 60):
            try:
                # a card redrawn while it is read (the next prompt's cards replace the last's) is read again
                return WebDriverWait(driver, timeout, poll_frequency=0.2, ignored_exceptions=(
                    NoSuchElementException, StaleElementReferenceException)).until(lambda _: condition())
            except TimeoutException:
                driver.save_screenshot(tmp_path / "browser.png")
                pytest.fail(f"timed out after {timeout} s waiting for {what} (the page: {tmp_path / 'browser.png'}); "
                            f"server log:\n{server_log(tmp_path)}")

        def css(selector: str):
            return driver.find_elements(By.CSS_SELECTOR, selector)

        # Run every cell up to the widget, as a learner would: select the first cell, Shift+Enter each in turn.
        n_cells = len(json.loads(notebook.read_text())["cells"])
        cells = wait(lambda: len(css(".jp-Notebook .jp-Cell")) == n_cells and css(".jp-Notebook .jp-Cell"),
                     "the notebook to open")
        # A Shift+Enter before the page is connected to a started kernel runs nothing: wait for both, the
        # server's word (idle, the page's websocket connected) and the page's (its status bar says Idle).
        def kernel_ready() -> bool:
            with urllib.request.urlopen(f"{base}/api/kernels?token={token}", timeout=5) as response:
                kernels = json.load(response)
            return bool(kernels) and all(k["execution_state"] == "idle" and k["connections"] > 0 for k in kernels) \
                and any(e.text.endswith("| Idle") for e in css(".jp-StatusBar-TextItem"))

        wait(kernel_ready, "the kernel to start and connect")
        ActionChains(driver).click(cells[0]).send_keys(Keys.ESCAPE).perform()
        for _ in cells:
            ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()

        def progress() -> str:
            labels = css(".jp-OutputArea .widget-vbox > .widget-label")
            return labels[0].text if labels else ""

        def cards():
            return css(".jp-OutputArea .widget-gridbox > .widget-vbox")

        def submit_enabled():
            buttons = [b for b in css(".jp-OutputArea button") if b.text.strip() == "Submit"]
            return buttons and buttons[0].is_enabled() and buttons[0]

        wait(lambda: progress() == f"0 of {N_WIDGET} ranked, 0 skipped" and len(cards()) == 4,
             "the ranking widget (cells run in the kernel)", timeout=TIMEOUT)
        shown = {}  # 1, 2 (the first and second prompt) -> its cards' text as the browser shows it

        def card_text(card) -> str:
            return " ".join(card.find_element(By.CSS_SELECTOR, ".widget-html").text.split())

        def places() -> list[str]:  # what each card's button says: "Pick [2]", or its place, "1st"
            return [c.find_element(By.CSS_SELECTOR, "button").text.strip() for c in cards()]

        # Prompt 1, by mouse: card 3's text, card 1's button, card 4's text; card 2 is placed last for us
        shown[1] = [card_text(c) for c in cards()]
        for i, part in ((2, ".widget-html"), (0, "button"), (3, ".widget-html")):
            target = cards()[i].find_element(By.CSS_SELECTOR, part)
            ActionChains(driver).move_to_element(target).click().perform()
        wait(lambda: places() == ["2nd", "4th", "1st", "3rd"], "the places after the clicks")
        ActionChains(driver).move_to_element(wait(submit_enabled, "Submit to be enabled")).click().perform()
        wait(lambda: progress() == f"1 of {N_WIDGET} ranked, 0 skipped", "the second prompt")
        wait(lambda: len(cards()) == 4 and [card_text(c) for c in cards()] != shown[1], "the second prompt's cards")

        # Prompt 2, by keys, the mouse over the widget (ipyevents listens then): 4, 2, Backspace (undo), 1, 2
        shown[2] = [card_text(c) for c in cards()]
        ActionChains(driver).move_to_element(cards()[0]).perform()
        for key in ("4", "2", Keys.BACKSPACE, "1", "2"):
            ActionChains(driver).send_keys(key).perform()
        wait(lambda: places() == ["2nd", "3rd", "4th", "1st"], "the places after the keys")
        wait(submit_enabled, "Submit to be enabled")
        ActionChains(driver).send_keys(Keys.ENTER).perform()
        wait(lambda: progress() == f"All {N_WIDGET} done: {N_WIDGET} ranked, 0 skipped.", "the last Submit")
        done = wait(lambda: [e.text for e in css(".jp-OutputArea .widget-html") if "All done" in e.text], "All done")
        assert "saved in runs/02_rankings/rankings.jsonl" in done[0] and str(tmp_path) not in done[0]
    finally:
        if driver is not None:
            driver.quit()
        stop_jupyterlab(server, base, token)

    # The file on disk: exactly the two rankings, of the texts the browser showed
    records = RankingStore(tmp_path / "runs" / "02_rankings" / "rankings.jsonl").records()
    prompts = list(dict.fromkeys(load_prompts("tiny", "train")["prompt"]))[:N_WIDGET]
    assert [(r["prompt"], r["ranking"], r["annotator"]) for r in records] == [
        (prompts[0], [2, 0, 3, 1], "learner"), (prompts[1], [3, 0, 1, 2], "learner")]
    for n, record in enumerate(records, start=1):
        assert [" ".join(f"[{i + 1}] {record['prompt']}{c}".split()) for i, c in enumerate(record["completions"])] \
            == [" ".join(text.split()) for text in shown[n]]
        assert record["seconds"] > 0
