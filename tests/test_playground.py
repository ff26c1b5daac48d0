"""The playground in a real browser: `mmada serve` (Prefect + MLflow + playground) over a registry made here.

Two tiny MMaDA versions are registered for real (a training run each, `@sft` then `@grpo` whose
parent is v1, an evaluation run naming v1), then `mmada serve --no-deployments` starts the three UIs
in this test's project folder. Headless Chromium (Debian's, driven by Playwright) picks versions,
chats and watches the denoising, generates an image, asks about an uploaded one, compares two
versions and gets the CLI's messages for bad input. Screenshots of the three UIs go to
``runs/test-artifacts/`` (and to ``$MMADA_SCREENSHOTS``, e.g. ``docs/images``, when set: how the
README's pictures are made).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from tests.test_pipeline_support import REPO, env_for
from tests.test_training_support import free_port

ARTIFACTS = REPO / "runs" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium)")
TEXT = "0123456789abcdefghijklmnopqrstuvwxyz"




def tiny_export(d: Path, seed: int) -> Path:
    """A tiny MMaDA export whose LM head favours single letters and digits (an untrained head picks
    image codes, which have no text to show)."""
    from mmada.models import MMaDAConfig, MMaDAModelLM
    from mmada.tokenization import load_text_tokenizer

    torch.manual_seed(seed)
    tok = load_text_tokenizer("builtin")
    model = MMaDAModelLM(MMaDAConfig.from_preset("tiny", n_layers=1, d_model=64, n_heads=2, n_kv_heads=2,
                                                 mlp_hidden_size=128))
    keep = sorted({i for c in TEXT for i in tok(c, add_special_tokens=False)["input_ids"]})
    with torch.no_grad():
        w = model.get_output_embeddings().weight  # (V, d)
        scale = torch.zeros(w.shape[0], 1)
        scale[keep] = 4.0
        w.mul_(scale)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def register(root: Path) -> str:
    from mmada.diffusion.settings import SamplerSettings
    from mmada.eval.report import EvalReport, ModelRef, log_report
    from mmada.tracking import artifact_root_for
    from mmada.tracking.client import Tracker
    from mmada.tracking.registry import register_export

    uri = f"sqlite:///{root / 'runs' / 'mlflow.db'}"
    (root / "runs").mkdir(parents=True, exist_ok=True)
    for i, (alias, parent) in enumerate([("sft", None), ("grpo", "mmada-tiny/1")]):
        t = Tracker(uri, asynchronous=False)
        t.start_run(f"mmada-{alias}", run_name=f"tiny-{alias}", artifact_location=artifact_root_for(uri))
        tags = {"stage": alias} | ({"parent_model_version": parent} if parent else {})
        assert register_export(t, tiny_export(root / f"export-{alias}", i), "mmada-tiny", alias=alias, tags=tags) == str(i + 1)
        t.close()
    log_report(EvalReport(suite="math", protocol="gsm8k_flexible", dataset="builtin:arithmetic", n=4,
                          model=ModelRef(version="models:/mmada-tiny/1"), sampler=SamplerSettings(),
                          metrics={"accuracy": 0.25}), uri)
    return uri


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("playground")
    uri = register(root)
    ports = {"prefect": free_port(), "mlflow": free_port(), "playground": free_port()}
    env = env_for(root, PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin")
    env.pop("MLFLOW_TRACKING_URI", None)  # the project's own store: runs/mlflow.db in this folder
    log = root / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "mmada", "serve", "--no-deployments",
                                 "--prefect-port", str(ports["prefect"]), "--mlflow-port", str(ports["mlflow"]),
                                 "--playground-port", str(ports["playground"])],
                                cwd=root, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while "mmada serve: ready" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mmada serve did not start:\n{log.read_text()[-5000:]}")
        time.sleep(0.5)
    info = {"proc": proc, "root": root, "uri": uri, "log": log, **{k: f"http://127.0.0.1:{p}" for k, p in ports.items()}}
    yield info
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser, served):
    p = browser.new_page(viewport={"width": 1400, "height": 1000})
    p.set_default_timeout(60_000)
    p.goto(served["playground"])
    p.wait_for_selector("#version-info h3")
    yield p
    assert "Traceback" not in p.inner_text("body")
    p.close()


def shot(p, name: str, **kw) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    p.evaluate("window.scrollTo(0, 0)")
    p.screenshot(path=str(path), **kw)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MMADA_SCREENSHOTS"):
        dest = Path(os.environ["MMADA_SCREENSHOTS"])
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest / path.name)


def set_number(p, elem: str, value) -> None:
    box = p.locator(f"#{elem} input").first
    box.fill(str(value))
    box.press("Tab")


def open_tab(p, name: str) -> None:
    p.get_by_role("tab", name=name).click()


def pick_version(p, label: str) -> None:
    p.locator("#version input").click()
    p.get_by_role("option", name=label).click()


def expected_answer(served, alias: str, prompt: str, **settings) -> str:
    """The same answer computed outside the page: the export loaded directly, the CLI's generate path."""
    from mmada.diffusion.settings import SamplerSettings
    from mmada.inference import generate_answers, load_checkpoint

    lm = load_checkpoint(served["root"] / f"export-{alias}", device="cpu")
    return generate_answers(lm, [prompt], SamplerSettings.make(**settings))[0].strip()


# ------------------------------------------------------------------------------------------------


def test_serve_starts_three_uis_on_localhost(served):
    out = served["log"].read_text()
    assert f"Prefect UI   {served['prefect']}" in out
    assert f"MLflow UI    {served['mlflow']}/#/experiments?workflowType=machine_learning" in out
    assert f"playground   {served['playground']}" in out
    with urllib.request.urlopen(served["playground"], timeout=10) as r:
        assert r.status == 200


def test_version_picker_shows_lineage_metrics_and_run_link(page, served):
    info = page.inner_text("#version-info")
    assert "mmada-tiny version 2" in info and "@grpo" in info and "v2 (grpo) ← v1 (sft)" in info
    assert "evaluations: none logged" in info
    link = page.locator("#version-info a").first.get_attribute("href")
    assert link.startswith(f"{served['mlflow']}/#/experiments/") and link.endswith("?workflowType=machine_learning")
    pick_version(page, "mmada-tiny v1 @sft [sft]")
    page.wait_for_function("document.querySelector('#version-info').innerText.includes('version 1')")
    info = page.inner_text("#version-info")
    assert "math/gsm8k_flexible" in info and "0.25" in info and "@sft" in info


def test_chat_streams_the_denoising_then_the_answer(page, served):
    # record every state of the denoising view as the page shows it
    page.evaluate("""() => { window.states = [];
        new MutationObserver(() => window.states.push(document.querySelector('#denoise').innerText))
          .observe(document.querySelector('#denoise'), {subtree: true, childList: true, characterData: true}); }""")
    for name, v in {"steps": 8, "gen_length": 8, "block_length": 4, "seed": 3}.items():
        set_number(page, f"text-{name}", v)
    page.fill("#prompt textarea", "What is 2+3?")
    page.click("#send")
    page.wait_for_function("document.querySelector('#text-stats').innerText.includes('tokens/s')")
    stats = page.inner_text("#text-stats")
    assert "8 steps" in stats and "gen8/blk4/steps8" in stats
    states = [s for s in page.evaluate("window.states") if s.strip()]
    masked = [s.count("░") for s in states]
    assert max(masked) >= 4 and min(masked) == 0, states  # masks were seen filling in, step by step
    assert len({m for m in masked}) >= 4, masked
    answer = expected_answer(served, "grpo", "What is 2+3?", steps=8, gen_length=8, block_length=4, seed=3)
    assert answer and any(c in answer for c in TEXT)
    page.wait_for_function(f"document.querySelector('#chat').innerText.includes({answer!r})")
    # the colour of this step's tokens: the legend names them
    assert "new" in page.inner_text("#denoise")
    shot(page, "playground-text")


def test_a_bad_setting_gets_the_cli_message(page):
    set_number(page, "text-gen_length", 10)
    set_number(page, "text-block_length", 4)
    page.fill("#prompt textarea", "hi")
    page.click("#send")
    page.wait_for_function("document.querySelector('#text-status').innerText.includes('error')")
    status = page.inner_text("#text-status").strip()
    assert status == "error: invalid SamplerSettings: gen_length=10 is not divisible by block_length=4"
    page.locator("#text-threshold textarea, #text-threshold input").first.fill("abc")
    set_number(page, "text-gen_length", 8)
    page.click("#send")
    page.wait_for_function("document.querySelector('#text-status').innerText.includes('threshold')")
    assert "threshold: Input should be a valid number" in page.inner_text("#text-status")


def test_text_to_image_shows_the_maskgit_strip_and_the_verdict(page):
    open_tab(page, "Text-to-image")
    page.fill("#t2i-caption textarea", "a red circle")
    set_number(page, "t2i-steps", 4)
    page.click("#t2i-generate")
    page.wait_for_function("document.querySelector('#t2i-stats').innerText.includes('MaskGIT steps')")
    assert "4 MaskGIT steps" in page.inner_text("#t2i-stats")
    verdict = page.inner_text("#t2i-verdict")
    assert "shapes checker (single_object):" in verdict and "score" in verdict
    size = page.evaluate("""() => { const i = document.querySelector('#t2i-strip img');
                                   return [i.naturalWidth, i.naturalHeight]; }""")
    assert size[0] > 3 * size[1]  # four decodes side by side
    assert page.locator("#t2i-image img").count() == 1
    shot(page, "playground-t2i")


def test_understanding_answers_about_an_uploaded_image(page, tmp_path):
    from mmada.builtin.shapes import generate_shapes

    img = tmp_path / "scene.png"
    generate_shapes(1, seed=5)[0]["image"].save(img)
    for name, v in {"steps": 8, "gen_length": 8, "block_length": 4}.items():
        set_number(page, f"text-{name}", v)
    open_tab(page, "Understanding")
    page.locator("#mmu-image input[type=file]").set_input_files(str(img))
    page.wait_for_selector("#mmu-image img")
    page.fill("#mmu-question textarea", "What shape is red?")
    page.click("#mmu-ask")
    page.wait_for_function("document.querySelector('#mmu-stats').innerText.includes('tokens/s')")
    assert "answer:" in page.inner_text("#mmu-answer")
    # or pick an image from the built-in world: the question comes with it
    page.locator("#mmu-source input").click()
    page.get_by_role("option", name="builtin:shapes").click()
    page.locator("#mmu-gallery img").first.click()
    page.wait_for_function("document.querySelector('#mmu-question textarea').value.endsWith('?')")


def test_side_by_side_runs_the_same_prompt_on_two_versions(page):
    for name, v in {"steps": 8, "gen_length": 8, "block_length": 4}.items():
        set_number(page, f"text-{name}", v)
    open_tab(page, "Compare")
    page.locator("#version-b input").click()
    page.get_by_role("option", name="mmada-tiny v1 @sft [sft]").click()
    page.fill("#cmp-prompt textarea", "What is 2+3?")
    page.click("#cmp-run")
    page.wait_for_function("document.querySelector('#cmp-b-stats').innerText.includes('answer:')")
    assert "mmada-tiny v2" in page.inner_text("#cmp-a-title") and "mmada-tiny v1" in page.inner_text("#cmp-b-title")
    assert "tokens/s" in page.inner_text("#cmp-a-stats")


def test_a_missing_version_is_a_clear_message(browser, served):
    p = browser.new_page()
    p.goto(f"{served['playground']}/?model=models:/mmada-tiny/99")
    p.wait_for_selector("#version-info")
    p.wait_for_function("document.querySelector('#version-info').innerText.includes('error')")
    assert "has no version 99 of 'mmada-tiny'" in p.inner_text("#version-info")
    p.close()
    r = subprocess.run([sys.executable, "-m", "mmada", "playground", "models:/mmada-tiny@nope"], cwd=served["root"],
                       env=env_for(served["root"]), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().startswith("error: models:/mmada-tiny@nope: the registry at") and "no alias @nope" in r.stderr


def test_mlflow_opens_the_training_view_and_links_the_playground(browser, served):
    from mlflow import MlflowClient

    c = MlflowClient(served["uri"])
    for name in ("mmada-sft", "mmada-grpo", "mmada-eval"):
        assert c.get_experiment_by_name(name).tags["mlflow.experimentKind"] == "custom_model_development"
    mv = c.get_model_version("mmada-tiny", "2")
    assert mv.description.endswith("/?model=models:/mmada-tiny/2")  # the playground page of this version
    p = browser.new_page(viewport={"width": 1400, "height": 900})
    exp = c.get_experiment_by_name("mmada-grpo").experiment_id
    p.goto(f"{served['mlflow']}/#/experiments/{exp}?workflowType=machine_learning")
    p.wait_for_selector("text=tiny-grpo", timeout=60_000)
    assert "/runs" in p.url
    p.goto(f"{served['mlflow']}/#/models/mmada-tiny/versions/2?workflowType=machine_learning")
    p.wait_for_selector("text=Try it in the playground", timeout=60_000)
    shot(p, "mlflow-model-version")
    p.close()


def test_prefect_ui_screenshot(browser, served):
    p = browser.new_page(viewport={"width": 1400, "height": 900})
    p.goto(f"{served['prefect']}/dashboard")
    p.wait_for_selector("text=Dashboard", timeout=60_000)
    shot(p, "prefect-dashboard")
    p.close()


def test_ctrl_c_stops_the_three(served):
    proc = served["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert "stopped: prefect server, mlflow server, playground" in served["log"].read_text()
    for url in (served["playground"], served["mlflow"]):
        with pytest.raises(OSError):
            urllib.request.urlopen(url, timeout=3)
