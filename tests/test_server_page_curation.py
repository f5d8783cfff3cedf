"""The page's curation actions in real headless Chromium against a real server: merge ticked
clusters, label one, split one, undo a merge, and recluster at another resolution from the
granularity control. Skipped only when chromium or chromedriver is absent."""

from __future__ import annotations

import pytest

from tests.test_server_page import browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow  # drives headless chromium

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402 (skipped first)
from selenium.webdriver.common.by import By  # noqa: E402 (test_server_page skips without chromium first)
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from clusterer.api import Store  # noqa: E402
from tests.test_curation import BANK  # noqa: E402
from tests.test_server_live import Server, httpx  # noqa: E402
from tests.test_upkeep import topic_of, topic_texts  # noqa: E402


@pytest.fixture
def live(tmp_path):
    data = tmp_path / "data"
    with Store.open(data, device="cpu") as s:
        s.ingest(topic_texts() + BANK)
        s.cluster("leiden", k=10, resolution=1.0, min_size=5)
        ids = topic_of(s)
        bank = next(c.id for c in s.clusters() if "bank transfer" in c.keywords)
    srv = Server(data, tmp_path / "server.log")
    srv.ids = {**ids, "bank": bank}
    yield srv
    srv.stop()


def rows(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#clusters tr.cluster-row")


def row_ids(driver):
    return [int(r.get_attribute("data-id")) for r in rows(driver)]


def test_page_merges_labels_splits_unmerges_and_reclusters(live, browser):  # noqa: F811 (the fixture)
    wait = WebDriverWait(browser, 90, ignored_exceptions=(StaleElementReferenceException,))
    ids = live.ids
    browser.get(live.url + "/")
    wait.until(lambda d: len(rows(d)) == 4 or None)

    # merge: tick two clusters, press merge
    for cid in (ids["card"], ids["flight"]):
        browser.find_element(By.CSS_SELECTOR, f'#clusters tr[data-id="{cid}"] .merge-check').click()
    button = browser.find_element(By.ID, "merge-button")
    assert button.is_enabled()
    button.click()
    wait.until(lambda d: len(rows(d)) == 3 or None)
    assert ids["flight"] not in row_ids(browser) and ids["card"] in row_ids(browser)
    assert httpx.get(live.url + f"/clusters/{ids['card']}").json()["size"] == 24
    assert "merged" in browser.find_element(By.ID, "status").text

    # label the merged cluster from its detail pane
    wait.until(lambda d: f"cluster {ids['card']} · 24" in d.find_element(By.CSS_SELECTOR, "#detail h2").text or None)
    box = browser.find_element(By.ID, "label-input")
    box.clear()
    box.send_keys("cards and flights")
    browser.find_element(By.ID, "label-save").click()
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#clusters .cluster-label") or None)
    assert "cards and flights" in browser.find_element(By.CSS_SELECTOR, f'#clusters tr[data-id="{ids["card"]}"]').text
    assert httpx.get(live.url + f"/clusters/{ids['card']}").json()["label"] == "cards and flights"

    # undo the merge
    wait.until(lambda d: "cards and flights" in d.find_element(By.CSS_SELECTOR, "#detail h2").text or None)
    browser.find_element(By.ID, "unmerge-button").click()
    wait.until(lambda d: len(rows(d)) == 4 or None)
    assert ids["flight"] in row_ids(browser)

    # split the bank cluster at resolution 1
    browser.find_element(By.CSS_SELECTOR, f'#clusters tr[data-id="{ids["bank"]}"] td:nth-child(3)').click()
    wait.until(lambda d: f"cluster {ids['bank']} ·" in d.find_element(By.CSS_SELECTOR, "#detail h2").text or None)
    browser.find_element(By.ID, "split-resolution").send_keys("1")
    browser.find_element(By.ID, "split-button").click()
    wait.until(lambda d: len(rows(d)) == 5 or None)
    assert ids["bank"] not in row_ids(browser)

    # the granularity control: recluster at resolution 2, the page moves to the new run
    browser.find_element(By.ID, "resolution-input").send_keys("2")
    browser.find_element(By.ID, "recluster-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#run-select option")) == 2 or None)
    runs = httpx.get(live.url + "/runs").json()["runs"]
    assert runs[0]["params"]["resolution"] == 2.0
    wait.until(lambda d: d.find_element(By.ID, "run-select").get_attribute("value") == str(runs[0]["id"]) or None)
    painted = wait.until(
        lambda d: (
            d.execute_script(
                "const c=document.getElementById('map');const a=c.getContext('2d').getImageData(0,0,c.width,c.height).data;"
                "let n=0;for(let i=3;i<a.length;i+=4){if(a[i]>0)n++;}return n;"
            )
            or None
        )
    )
    assert painted > 100 and "UMAP" in browser.find_element(By.ID, "map-tip").text
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not logs, logs
