"""Shared fixtures. Real chest X-ray samples are read from ../shared and skipped when absent."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch

from ravl_med.reproducibility import pin_cpu_kernels

# No hub lookups in tests: each failed one would stall ~45 s.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The CPU code paths the CLI pins (ravl_med.reproducibility), so tests compute what the commands compute.
pin_cpu_kernels()
logging.getLogger("pydicom").setLevel(logging.ERROR)

# Session fixtures with fine-tuned models that learned a planted shortcut (trained once per run).
pytest_plugins = ["tests.shortcut_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
CXR_SAMPLES = REPO_ROOT.parent / "shared" / "data" / "cxr-samples"
SIIM_DICOM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"

#: The process that builds the shared shortcut models on the xdist controller (start_prebuild).
_PREBUILD = pytest.StashKey["subprocess.Popen | None"]()


def pytest_sessionstart(session):
    from tests.shortcut_fixtures import start_prebuild

    session.config.stash[_PREBUILD] = start_prebuild(session.config)


def pytest_sessionfinish(session):
    process = session.config.stash.get(_PREBUILD, None)
    if process is not None and process.poll() is None:  # e.g. -x stopped the run early
        process.terminate()
        process.wait(timeout=60)



@pytest.fixture(scope="session", autouse=True)
def tracking_store(tmp_path_factory):
    """Commands track to MLflow by default; in tests that store lives in a temporary folder."""
    import mlflow

    folder = tmp_path_factory.mktemp("mlflow")
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlruns.db'}"
    # Created now, whichever test comes first (MLflow logs its table creation to stderr, which the
    # one-line error tests read).
    mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).search_experiments()
    yield folder
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = saved


@pytest.fixture(scope="session")
def cxr_samples() -> Path:
    """Folder of real chest X-ray fixtures (see its README); the test is skipped without it."""
    if not CXR_SAMPLES.is_dir():
        pytest.skip(f"real chest X-ray samples not found at {CXR_SAMPLES}")
    return CXR_SAMPLES


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for the module: on a shared 2-core machine two threads spin against other
    jobs (up to 50x slower). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch):
    """Every socket connection and name lookup fails the test (weights must come from local files)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def chromium():
    """A headless Chromium driven by Selenium (``/usr/bin/chromium`` + chromium-driver); skipped without them."""
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not (Path(binary).exists() and Path(driver).exists()):
        pytest.skip("chromium / chromium-driver not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()
