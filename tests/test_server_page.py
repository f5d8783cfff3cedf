"""The web page in real headless Chromium (Debian's chromium + chromedriver through Selenium)
against a real server: the cluster list renders, a click shows members, a search shows a
cluster, and the map is drawn. Skipped only when chromium or chromedriver is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("CLUSTERER_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CLUSTERER_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--window-size=1280,860",
)

if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
    pytest.skip(
        f"needs Debian chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}); "
        "install with: apt-get install -y chromium chromium-driver",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402 (after the skip guards above)
from selenium.webdriver.common.by import By  # noqa: E402 (after the skip guards above)
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402 (after the skip guards above)

from tests.fakes import TOPICS  # noqa: E402 (after the skip guards above)
from tests.test_server import make_store  # noqa: E402 (after the skip guards above)
from tests.test_server_live import Server, httpx  # noqa: E402 (after the skip guards above)

pytestmark = pytest.mark.slow  # drives headless chromium


@pytest.fixture
def browser(tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium-manager must not look anything up
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(service=ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture
def live(tmp_path):
    data = tmp_path / "data"
    make_store(data).close()
    srv = Server(data, tmp_path / "server.log")
    yield srv
    srv.stop()


def test_page_lists_clusters_shows_members_and_looks_up(live, browser, tmp_path):
    wait = WebDriverWait(browser, 60)
    clusters = httpx.get(live.url + "/clusters").json()["clusters"]
    browser.get(live.url + "/")
    rows = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#clusters tr.cluster-row") or None)
    assert len(rows) == len(clusters)
    assert rows[0].get_attribute("data-id") == str(clusters[0]["id"])
    assert clusters[0]["centre_text"] in rows[0].text and str(clusters[0]["size"]) in rows[0].text

    rows[0].click()
    members = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#members li .text") or None)
    expected = httpx.get(live.url + f"/clusters/{clusters[0]['id']}/members?limit=20").json()["members"]
    assert [m.text for m in members] == [m["text"] for m in expected]
    assert browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert f"cluster {clusters[0]['id']}" in browser.find_element(By.CSS_SELECTOR, "#detail h2").text

    query = TOPICS["pin"] + " please"
    want = httpx.post(live.url + "/lookup", json={"text": query}).json()["cluster_id"]
    box = browser.find_element(By.ID, "search-input")
    box.send_keys(query)
    browser.find_element(By.ID, "search-button").click()
    card = wait.until(lambda d: d.find_elements(By.ID, "lookup-cluster") or None)[0]
    assert f"cluster {want}" in card.text
    assert browser.find_elements(By.CSS_SELECTOR, "#nearest li")

    painted = wait.until(
        lambda d: (
            d.execute_script(
                "const c=document.getElementById('map');const a=c.getContext('2d').getImageData(0,0,c.width,c.height).data;"
                "let n=0;for(let i=3;i<a.length;i+=4){if(a[i]>0)n++;}return n;"
            )
            or None
        )
    )
    assert painted > 100
    shot = Path(os.environ.get("CLUSTERER_SCREENSHOT", tmp_path / "serve.png"))
    shot.parent.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] if hasattr(browser, "get_log") else []
    assert not logs, logs
