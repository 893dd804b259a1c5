"""`chex serve` with a prompt that is not present: the table row names its best candidate (drawn dashed
in the annotated PNG, with its weight), the page explains the dashed box, and the JSON keeps `box: null`."""

import json

import numpy as np
import pytest
from PIL import Image

from chexcli.render import item_color
from chexcli.serve.session import ServeSession, table_rows

from .test_browser import browser  # noqa: F401  (headless Chromium; skips the browser test without one)

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # the browser fixture skips before these are needed
    pass


def all_absent(predict):
    """`predict`, with every text prompt turned into one that is not present (no region passes the threshold)."""
    def wrapped(*args, **kwargs):
        predictions = predict(*args, **kwargs)
        for pred in predictions:
            for q in pred.queries:
                if q.type == "prompt":
                    q.box, q.present = None, False
                    for r in q.regions:
                        r.present = False
        return predictions
    return wrapped


@pytest.fixture(scope="module")
def session(tiny_bundle):
    s = ServeSession.load(tiny_bundle, max_new_tokens=4)
    s.predictor.predict = all_absent(s.predictor.predict)
    yield s
    s.close()


def test_rows_name_the_best_candidate_and_the_json_keeps_box_null(session):
    gray = np.random.default_rng(1).integers(0, 255, (300, 260), dtype=np.uint8)
    entry = session.add_upload(_png(gray), "a.png")
    answer = session.ask(entry.id, ["cardiac silhouette"], [[20, 30, 120, 150]])
    prompt, box = answer.record["queries"]
    assert prompt["box"] is None and prompt["present"] is False  # the JSON line as before
    assert "best" not in json.loads(answer.json_line)["queries"][0]
    best = max(prompt["regions"], key=lambda r: r["weight"])
    assert answer.rows[0]["best"] == {"box": best["box"], "weight": best["weight"]}
    assert answer.rows[1]["best"] is None  # box prompts are unchanged

    drawn = np.asarray(Image.open(answer.png).convert("RGB"))[:300]
    x1, y1, x2, y2 = (int(round(v)) for v in best["box"])
    bottom = [tuple(p) for p in drawn[min(y2, 299), x1 + 2: x2 - 1]]
    assert item_color(0) in bottom  # the dashed best candidate, in the prompt's colour


def test_rows_of_a_present_prompt_and_a_report_have_no_best():
    region = {"box": [1.0, 2.0, 3.0, 4.0], "weight": 0.9, "present": True}
    record = {"queries": [{"type": "prompt", "prompt": "left lung", "box": [1.0, 2.0, 3.0, 4.0], "score": 0.9,
                           "present": True, "regions": [region], "sentence": "Clear."}],
              "report_queries": [{"type": "prompt", "prompt": "heart", "box": None, "score": 0.2, "present": False,
                                  "kept": True, "sentence": "Normal.",
                                  "regions": [dict(region, weight=0.2, present=False),
                                              dict(region, box=[5.0, 6.0, 7.0, 8.0], weight=0.4, present=False)]}]}
    rows = table_rows(record)
    assert [row["best"] for row in rows] == [{"box": [5.0, 6.0, 7.0, 8.0], "weight": 0.4}, None]


@pytest.fixture
def base(session):
    from chexcli.serve.server import ChexServer

    server = ChexServer("127.0.0.1", 0)
    server.attach(session)
    server.start_in_thread()
    yield server.url
    server.stop()


def test_page_explains_the_dashed_box(browser, base):  # noqa: F811
    wait = WebDriverWait(browser, 30)
    browser.get(base)
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#example-buttons button"))).click()
    wait.until(lambda d: "synthetic_normal.png" in d.find_element(By.ID, "image-caption").text)
    assert not browser.find_element(By.ID, "dashed-note").is_displayed()
    browser.find_element(By.ID, "prompts").send_keys("cardiac silhouette")
    browser.find_element(By.ID, "explain").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#table tbody tr"))
    record = json.loads(browser.find_element(By.ID, "json").get_attribute("textContent"))
    assert record["queries"][0]["box"] is None
    weight = f"{max(r['weight'] for r in record['queries'][0]['regions']):.2f}"
    row = browser.find_element(By.CSS_SELECTOR, "#table tbody tr .absent").text
    assert row == f"not present; dashed box: its most probable region (weight {weight}), below the presence threshold"
    note = browser.find_element(By.ID, "dashed-note")
    assert note.is_displayed() and "most probable region" in note.text
    alt = browser.find_element(By.ID, "annotated").get_attribute("alt")
    assert alt.endswith(f"dashed, not present: 1 cardiac silhouette (best candidate {weight})")


def _png(array) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()
