"""The teachers' web app in a real browser: ``attendance.py serve`` in a subprocess, driven by headless Chromium
(Debian's chromium + chromium-driver) through Selenium. A teacher creates a class, enrols three LFW people (one
upload also holds a file that is not a photo), uploads a class photo, sees the right names, corrects a wrong
student, downloads the session's CSV and opens the history with its chart."""
from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, shared_path
from tests.test_webapp import ENROLLED, enrolment_photos, lfw_class_photo, shipped_floor

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1280,1600")
SERVER_START_S = 120    # the server imports torch before it listens
PAGE_WAIT_S = 300       # enrolment and marking run the models on a CPU
SCREENSHOT = "WEBAPP_SCREENSHOT"  # set to a path to keep the results page's screenshot there


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def lfw() -> Path:
    return shared_path("data", "lfw", "deepfunneled")


@pytest.fixture
def server(tmp_path):
    """The URL of ``attendance.py serve`` on a free port over a fresh database; its log when it fails to start."""
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen([sys.executable, "attendance.py", "serve", "--port", str(port), "--db",
                                str(tmp_path / "class.sqlite")], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            urllib.request.urlopen(url, timeout=5).close()
            break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"the server did not start: {(tmp_path / 'server.log').read_text()}")
            time.sleep(0.5)
    yield url
    process.terminate()
    process.wait(30)
    log.close()


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is absent: apt-get install chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is absent (requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    options.add_experimental_option("prefs", {"download.default_directory": str(tmp_path / "downloads"),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(PAGE_WAIT_S)
    yield driver
    driver.quit()


def marks_on_page(driver) -> dict[str, str]:
    """student → "present" / "absent" (with " corrected") as the results page shows them."""
    from selenium.webdriver.common.by import By
    return {row.get_attribute("data-student"): row.find_element(By.CSS_SELECTOR, "td.mark").text
            for row in driver.find_elements(By.CSS_SELECTOR, "#marks tr[data-student]")}


def submit(driver, button) -> None:
    """Click a form's button and wait for the next page: ``click`` can return while the request still runs. The
    old page is marked with a script variable that the new document does not have; asking while the page changes
    can fail (stale element, "node does not belong to the document"), so the wait asks again."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait
    driver.execute_script("window.beforeSubmit = true")
    button.click()
    WebDriverWait(driver, PAGE_WAIT_S, ignored_exceptions=(WebDriverException,)).until(lambda d: d.execute_script(
        "return window.beforeSubmit === undefined && document.readyState === 'complete'"))


def heading(driver) -> str:
    """The page's h1, with the error message on an error page."""
    from selenium.webdriver.common.by import By
    errors = driver.find_elements(By.ID, "error-message")
    return driver.find_element(By.TAG_NAME, "h1").text + (f": {errors[0].text}" if errors else "")


def image_loaded(driver, element) -> bool:
    return driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element)


@pytest.mark.slow
def test_a_teacher_enrols_marks_corrects_and_exports_in_chromium(tmp_path, lfw, browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    driver.get(server)
    driver.find_element(By.ID, "class-name").send_keys("7B")
    submit(driver, driver.find_element(By.ID, "create-class"))
    assert heading(driver) == "Class 7B"
    class_url = driver.current_url

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    (uploads / "notes.txt").write_text("homework, not a photo")
    for name in ENROLLED:
        photos = []
        for number in enrolment_photos(name):
            photos.append(uploads / f"{name}_{number}.jpg")
            shutil.copy(lfw / name / f"{name}_{number:04d}.jpg", photos[-1])
        if name == ENROLLED[0]:
            photos.append(uploads / "notes.txt")
        driver.find_element(By.ID, "student-name").send_keys(name)
        driver.find_element(By.ID, "student-photos").send_keys("\n".join(map(str, photos)))
        submit(driver, driver.find_element(By.ID, "enroll"))
        assert heading(driver) == name
        assert driver.find_element(By.ID, "enrol-summary").text == "Enrolled in 7B with 2 photos."
        checks = [cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#photo-checks td:nth-child(2)")]
        assert checks[:2] == ["accepted", "accepted"]
        if name == ENROLLED[0]:
            assert checks[2] == "not an image in any format Pillow can decode"
        driver.get(class_url)
    assert [row.text.split()[0] for row in driver.find_elements(By.CSS_SELECTOR, "#students tr")[1:]] == ENROLLED

    driver.find_element(By.ID, "class-photos").send_keys(str(lfw_class_photo(lfw, uploads / "room.jpg")))
    submit(driver, driver.find_element(By.ID, "mark"))
    assert heading(driver).startswith("7B — ")
    colin, gloria, jean = ENROLLED
    assert marks_on_page(driver) == {colin: "present", gloria: "absent", jean: "present"}
    assert driver.find_element(By.ID, "summary").text.startswith("2 of 3 students present")
    photo = driver.find_element(By.CSS_SELECTOR, "img.photo")
    unknown = driver.find_elements(By.CSS_SELECTOR, "figure.unknown img")  # the stranger
    assert image_loaded(driver, photo) and unknown and all(image_loaded(driver, face) for face in unknown)
    if os.environ.get(SCREENSHOT):
        driver.save_screenshot(os.environ[SCREENSHOT])

    # the face taken for Jean_Chretien was Gloria's: one correction swaps them
    row = driver.find_element(By.CSS_SELECTOR, f'#marks tr[data-student="{jean}"]')
    Select(row.find_element(By.NAME, "actual")).select_by_value(gloria)
    submit(driver, row.find_element(By.CSS_SELECTOR, "button.fix"))
    assert marks_on_page(driver) == {colin: "present", gloria: "present corrected", jean: "absent corrected"}
    assert [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#corrections tr")[1:]] == [
        f"{jean} present absent wrong student", f"{gloria} absent present wrong student"]

    driver.find_element(By.ID, "session-csv").click()
    download = tmp_path / "downloads" / "class1_session1.csv"
    WebDriverWait(driver, PAGE_WAIT_S).until(lambda d: download.is_file())
    rows = {row["student"]: row for row in csv.DictReader(download.open(encoding="utf-8"))}
    assert {name: (row["present"], row["corrected"]) for name, row in rows.items()} == {
        colin: ("1", "0"), gloria: ("1", "1"), jean: ("0", "1")}
    assert float(rows[colin]["score"]) > shipped_floor() and rows[colin]["session"] == rows[colin]["date"]

    driver.get(f"{class_url}/history")
    assert image_loaded(driver, driver.find_element(By.ID, "chart"))
    history = {row.find_element(By.TAG_NAME, "td").text: row.text
               for row in driver.find_elements(By.CSS_SELECTOR, "#history tr")[1:]}
    assert history[jean].endswith("A* 0/1 0 %") and history[gloria].endswith("P* 1/1 100 %")
