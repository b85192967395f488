"""The chat page that `hovle serve` serves at /, used in a real headless Chromium (Debian's
chromium + chromium-driver, driven by Selenium): pick an image, ask, watch the answer stream,
continue the conversation, clear it. The screenshot lands in the test's folder."""

import os
import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from hovle import HoVLEModel, HoVLEProcessor  # noqa: E402
from hovle.serving.app import create_app  # noqa: E402

from .conftest import build_chat_folder, photo  # noqa: E402
from .test_serve import Server  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    if os.environ.get("HOVLE_REQUIRE_BROWSER"):
        raise RuntimeError("HOVLE_REQUIRE_BROWSER is set but chromium / chromedriver are missing")
    pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = build_chat_folder(tmp_path_factory.mktemp("page"))
    model, processor = HoVLEModel.from_pretrained(folder), HoVLEProcessor.from_pretrained(folder)
    server = Server(create_app(model, processor, model_id="tiny"))
    yield server, model, processor
    server.stop()


@pytest.fixture
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1100,800"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def answers(browser):
    return browser.find_elements(By.CSS_SELECTOR, ".message.assistant[data-state=done]")


def test_chat_page_streams_an_answer_about_an_image(served, browser, tmp_path):
    server, model, processor = served
    image = tmp_path / "photo.png"
    photo(21, (120, 80)).save(image)
    browser.get(server.url + "/")
    WebDriverWait(browser, 20).until(lambda b: "context 400 tokens" in b.find_element(By.ID, "model").text)

    limit = browser.find_element(By.ID, "max-tokens")
    limit.clear()
    limit.send_keys("40")
    file_input = browser.find_element(By.ID, "file")
    browser.execute_script("arguments[0].hidden = false", file_input)
    file_input.send_keys(str(image))
    WebDriverWait(browser, 20).until(lambda b: b.find_elements(By.CSS_SELECTOR, "#attached img"))
    browser.find_element(By.ID, "question").send_keys("What is in the image?")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda b: len(answers(b)) == 1)

    pixel_values, _ = processor.process_images([image])
    generation = {"max_new_tokens": 40}
    first = model.chat(processor, pixel_values, "What is in the image?", generation, return_history=True)
    assert answers(browser)[0].text == first[0]
    assert browser.find_elements(By.CSS_SELECTOR, ".message.user img")  # the question shows its image

    browser.find_element(By.ID, "question").send_keys("And its colours?")
    browser.find_element(By.ID, "send").click()
    WebDriverWait(browser, 60).until(lambda b: len(answers(b)) == 2)
    second = model.chat(processor, pixel_values, "And its colours?", generation, history=first[1])
    assert answers(browser)[1].text == second
    browser.save_screenshot(str(tmp_path / "chat-page.png"))
    assert (tmp_path / "chat-page.png").stat().st_size > 10_000

    browser.find_element(By.ID, "clear").click()
    assert browser.find_elements(By.CSS_SELECTOR, ".message") == []
