"""End to end: `chex serve` with a tiny bundle, driven by a real (headless) Chromium through Selenium.

Upload an image, type a prompt, mark a box by dragging, press Explain, and check that the page shows
the sentences and the annotated image; a bad upload shows a message and the app keeps working.
Screenshots go to the test's temporary folder (`screens/`). CI installs Chromium and chromedriver
(.ci/run); elsewhere the test is skipped when no browser is installed.
"""

import json
import os
import threading
import time
import shutil
import signal
import subprocess
import sys
import urllib.request

import pytest

from chexcli.serve.examples import example_path

from .conftest import free_port, wait_for_server

try:
    from selenium import webdriver
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:
    webdriver = None

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    """Headless Chromium. Skipped when none is installed, unless CHEX_REQUIRE_BROWSER is set (.ci/run sets it)."""
    missing = ("selenium is not installed (pip install -e '.[test]')" if webdriver is None else
               "no Chromium + chromedriver installed (apt-get install chromium chromium-driver; .ci/run does)"
               if BROWSER is None or DRIVER is None else None)
    if missing:
        (pytest.fail if os.environ.get("CHEX_REQUIRE_BROWSER") else pytest.skip)(missing)
    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER  # with both paths given Selenium never looks for (or downloads) a driver
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1440,1000",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    yield driver
    driver.quit()


@pytest.fixture
def server(tiny_bundle, tmp_path):
    """`chex serve` in a subprocess on a free port, with its temporary files under tmp_path/tmp."""
    port = free_port()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    proc = subprocess.Popen([sys.executable, "-m", "chexcli", "serve", "--model", str(tiny_bundle), "--port", str(port),
                             "--max-new-tokens", "6"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_for_server(f"http://127.0.0.1:{port}/api/info", proc)
        yield proc, f"http://127.0.0.1:{port}/", tmp
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_upload_prompt_box_explain(browser, server, tmp_path):
    proc, url, tmp = server
    screens = tmp_path / "screens"
    screens.mkdir()
    upload = tmp_path / "patient 1.png"
    shutil.copy(example_path("opacity"), upload)
    broken = tmp_path / "notes.png"
    broken.write_bytes(b"these are notes, not an image")
    wait = WebDriverWait(browser, 30)

    browser.get(url)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#example-buttons button")))
    assert browser.find_element(By.ID, "explain").get_attribute("disabled") is not None  # nothing chosen yet
    wait.until(lambda d: d.execute_script(  # example buttons show thumbnails
        "return [...document.querySelectorAll('#example-buttons img')].every(i => i.complete && i.naturalWidth > 0)"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#example-buttons img")) == 2
    browser.save_screenshot(str(screens / "0_start.png"))

    browser.find_element(By.ID, "file").send_keys(str(upload))
    wait.until(lambda d: d.execute_script("const i = document.getElementById('preview');"
                                          "return !i.closest('[hidden]') && i.complete && i.naturalWidth > 0;"))
    assert "patient 1.png: 448 × 512 pixels" in browser.find_element(By.ID, "image-caption").text

    browser.find_element(By.ID, "prompts").send_keys("left lung opacity")
    canvas = browser.find_element(By.ID, "overlay")
    size = canvas.size
    ActionChains(browser).move_to_element_with_offset(canvas, -size["width"] // 4, -size["height"] // 6) \
        .click_and_hold().move_by_offset(size["width"] // 3, size["height"] // 4).release().perform()
    assert browser.find_element(By.ID, "box-list").text.startswith("B1")
    for dx, dy in ((10, 10), (60, 80)):  # two clicks: opposite corners of a second box
        ActionChains(browser).move_to_element_with_offset(canvas, dx, dy).click().perform()
    boxes = browser.find_elements(By.CSS_SELECTOR, "#box-list li")
    assert [li.text.split()[0] for li in boxes] == ["B1", "B2"]
    remove = boxes[1].find_element(By.TAG_NAME, "button")
    assert remove.get_attribute("aria-label") == "Remove box B2"  # a named button, not just "remove"
    remove.click()  # and remove it again
    assert len(browser.find_elements(By.CSS_SELECTOR, "#box-list li")) == 1
    canvas.send_keys(Keys.ENTER)  # a box drawn with the keyboard: corner at the centre, 10 % right and down
    canvas.send_keys(Keys.SHIFT, Keys.ARROW_RIGHT, Keys.ARROW_DOWN)
    assert "First corner at 224, 256 px" in browser.find_element(By.ID, "cursor-position").text
    canvas.send_keys(Keys.ENTER)
    boxes = browser.find_elements(By.CSS_SELECTOR, "#box-list li")
    assert boxes[1].text.startswith("B2") and "224, 256 – 269, 307 px" in boxes[1].text
    boxes[1].find_element(By.TAG_NAME, "button").click()
    browser.save_screenshot(str(screens / "1_asked.png"))

    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#table tbody tr")
               and d.execute_script("const i = document.getElementById('annotated');"
                                    "return i.complete && i.naturalWidth > 0;"))
    record = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
    assert record["image"] == "patient 1.png" and [q["type"] for q in record["queries"]] == ["prompt", "box"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#table tbody tr")
    assert len(rows) == 2 and rows[0].text.startswith("1 left lung opacity")
    for row, query in zip(rows, record["queries"]):
        assert query["sentence"].strip() and query["sentence"].strip() in row.text  # the page shows each sentence
    natural = browser.execute_script("const i = document.getElementById('annotated');"
                                     "return [i.naturalWidth, i.naturalHeight];")
    assert natural[0] == 448 and natural[1] > 512  # the full-size image plus the legend panel of `chex predict`
    json_link = browser.find_element(By.ID, "dl-json").get_attribute("href")
    with urllib.request.urlopen(json_link, timeout=10) as r:  # the download is the same JSON line
        assert json.loads(r.read()) == record and "attachment" in r.headers["Content-Disposition"]
    browser.save_screenshot(str(screens / "2_answer.png"))

    browser.find_element(By.ID, "file").send_keys(str(broken))  # a bad upload: a message, and the app goes on
    wait.until(EC.visibility_of_element_located((By.ID, "image-error")))
    assert "notes.png: not a recognised image file" in browser.find_element(By.ID, "image-error").text
    browser.save_screenshot(str(screens / "3_bad_upload.png"))
    browser.find_element(By.CSS_SELECTOR, "#example-buttons button").click()  # an example, with the full report
    wait.until(lambda d: "synthetic_normal.png" in d.find_element(By.ID, "image-caption").text)
    assert not browser.find_element(By.ID, "image-error").is_displayed()
    browser.find_element(By.ID, "report").click()
    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: "synthetic_normal.png" in d.find_element(By.ID, "json").get_attribute("textContent"))
    record = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
    shown = browser.find_element(By.ID, "report-text").text
    assert shown == (record["report"] or "(no sentence was selected for the report)")
    assert "(report)" in browser.find_element(By.ID, "table").text
    browser.save_screenshot(str(screens / "4_report.png"))

    proc.send_signal(signal.SIGTERM)  # stops cleanly and removes every upload
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped; uploads removed" in err and not list(tmp.glob("chex-serve-*"))
    print(f"screenshots in {screens}")


@pytest.fixture
def slow_server(tiny_bundle, monkeypatch):
    """`chex serve` in this process, with a model that takes 2 s per call."""
    from chexcli.serve.server import ChexServer
    from chexcli.serve.session import ServeSession

    session = ServeSession.load(tiny_bundle, max_new_tokens=2)
    original = session.predictor.predict
    monkeypatch.setattr(session.predictor, "predict", lambda *a, **k: (time.sleep(2), original(*a, **k))[1])
    server = ChexServer("127.0.0.1", 0)
    server.attach(session)
    server.start_in_thread()
    yield server.url, session
    server.stop()
    session.close()


def test_queue_position_and_cancel(browser, slow_server):
    """A question waits behind a slow one: the page shows its place in line, and Cancel drops it."""
    url, session = slow_server
    wait = WebDriverWait(browser, 30)
    browser.get(url)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#example-buttons button"))).click()
    wait.until(lambda d: "synthetic_normal.png" in d.find_element(By.ID, "image-caption").text)
    image_id = browser.execute_script("return state.image.id")
    blocker = json.dumps({"image": image_id, "prompts": ["heart"]}).encode()
    blocking = threading.Thread(target=lambda: urllib.request.urlopen(urllib.request.Request(
        url + "api/ask", blocker, {"Content-Type": "application/json"}), timeout=120).read())
    blocking.start()  # the model is busy for 2 s
    time.sleep(0.3)
    calls = []
    original = session.run_question
    session.run_question = lambda question: (calls.append(question.prompts), original(question))[1]
    browser.find_element(By.ID, "prompts").send_keys("left lung")
    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: d.find_element(By.ID, "status").text == "Waiting: 1 question ahead of yours.")
    assert browser.find_element(By.ID, "status").get_attribute("role") == "status"
    assert browser.find_element(By.ID, "elapsed").get_attribute("aria-hidden") == "true"  # seconds: not announced
    browser.find_element(By.ID, "cancel").click()
    wait.until(lambda d: d.find_element(By.ID, "ask-error").text == "Cancelled.")
    assert browser.find_element(By.ID, "explain").is_enabled()
    blocking.join()
    time.sleep(0.5)
    assert calls == []  # the cancelled question never reached the model


def test_phone_layout_and_visible_focus(browser, server):
    proc, url, tmp = server
    browser.set_window_size(320, 640)
    browser.get(url)
    WebDriverWait(browser, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#example-buttons button")))
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
    assert width[0] <= width[1]  # nothing wider than the screen: no sideways scrolling
    assert browser.execute_script("return document.documentElement.scrollHeight") > width[1]  # it scrolls down
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)  # the first stop is the (hidden) file input
    assert browser.switch_to.active_element.get_attribute("id") == "file"
    outline = browser.execute_script("return getComputedStyle(document.getElementById('drop')).outlineStyle")
    assert outline not in ("", "none")  # its label shows the focus
