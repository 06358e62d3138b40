"""`eaml_ssm.load_run`: a trained run folder used from Python, and the original API names."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_run import TINY_TRAIN

import eaml_ssm
from eaml_ssm.cli import main

TINY = [*TINY_TRAIN, "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--out", str(out), "--name", "r"]) == 0
    return out / "r"


def test_load_run_holds_config_tasks_model_and_normalizer(run_dir: Path) -> None:
    run = eaml_ssm.load_run(run_dir, device="cpu")
    saved = json.loads((run_dir / "config.json").read_text())
    assert run.config.num_epochs == saved["num_epochs"] == 3
    assert [t.params for t in run.tasks] == [
        {k: v for k, v in row.items() if k != "task_id"}
        for row in json.loads((run_dir / "tasks.json").read_text())
    ]
    assert run.model.hidden_dim == 16 and run.normalizer.input_dim == run.family.input_dim
    # SSM.load opens the same checkpoint (the model alone) and gives the same weights
    alone = eaml_ssm.SSM.load(run_dir / "checkpoint.pt")
    for (n, a), (_, b) in zip(
        alone.state_dict().items(), run.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), n


def test_predict_matches_the_stored_rows_oracle(run_dir: Path) -> None:
    """predict(state, action) = state + denormalized model output on the stored raw row."""
    run = eaml_ssm.load_run(run_dir, device="cpu")
    obs = np.array(run.store.obs_view()[:6])  # raw [state, one-hot action] rows (collect)
    ds = run.family.state_dim
    states, actions = obs[:, :ds], obs[:, ds:].argmax(1)
    x = run.normalizer.normalize_inputs(torch.from_numpy(obs))
    with torch.no_grad():
        y, _ = run.model(x, run.model.init_hidden(6))
    expected = states + run.normalizer.denormalize_targets(y).numpy()
    got = run.predict(states, actions)
    assert isinstance(got, np.ndarray) and got.shape == (6, ds)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    as_tensor = run.predict(torch.from_numpy(states), torch.from_numpy(actions))
    assert isinstance(as_tensor, torch.Tensor)
    np.testing.assert_allclose(as_tensor.numpy(), got)


def test_predict_refuses_bad_shapes(run_dir: Path) -> None:
    run = eaml_ssm.load_run(run_dir, device="cpu")
    with pytest.raises(ValueError, match=r"states must be \(b, 4\)"):
        run.predict(np.zeros(4), np.array([0]))
    with pytest.raises(ValueError, match="expects"):
        run.predict(np.zeros((2, 3)), np.array([0, 1]))  # CartPole states have 4 numbers
    with pytest.raises(ValueError, match="actions"):
        run.predict(np.zeros((2, 4)), np.array([0, 1, 1]))


def test_predict_sequence_equals_stepping_with_the_hidden_state(run_dir: Path) -> None:
    run = eaml_ssm.load_run(run_dir, device="cpu")
    rng = np.random.default_rng(0)
    states = rng.normal(size=(2, 5, run.family.state_dim)).astype(np.float32)
    actions = rng.integers(0, 2, size=(2, 5))
    seq, h_seq = run.predict(states, actions, return_hidden=True)
    h = None
    for t in range(5):
        step, h = run.predict(states[:, t], actions[:, t], h, return_hidden=True)
        np.testing.assert_allclose(step, seq[:, t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h, h_seq, rtol=1e-4, atol=1e-5)


def test_run_adapter_adapts_run_model_in_place_and_resets(run_dir: Path) -> None:
    run = eaml_ssm.load_run(run_dir, device="cpu")
    start = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    adapter = run.adapter(experience_weight=0.5, num_steps=2)
    assert adapter.config.experience_weight == 0.5 and adapter.config.num_steps == 2
    assert adapter.model is run.model and adapter.experience_buffer is run.store
    obs = torch.from_numpy(np.array(run.store.obs_view()[:16]))[None]  # (1, 16, di) raw
    tgt = torch.from_numpy(np.array(run.store.target_view()[:16]))[None]
    x, y = run.normalizer.normalize_inputs(obs), run.normalizer.normalize_targets(tgt)
    trial = adapter.fork()
    trial.update_step(x, y)
    assert all(torch.equal(p.detach(), start[n]) for n, p in run.model.named_parameters())
    _, steps = adapter.update_step(x, y)
    assert steps > 0
    assert any(not torch.equal(p.detach(), start[n]) for n, p in run.model.named_parameters())
    adapter.reset()
    assert all(torch.equal(p.detach(), start[n]) for n, p in run.model.named_parameters())


def test_load_run_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such run folder"):
        eaml_ssm.load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"checkpoint\.pt: no checkpoint"):
        eaml_ssm.load_run(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad/checkpoint\.pt"):
        eaml_ssm.load_run(bad)
    with pytest.raises(ValueError, match=r"checkpoint\.pt"):
        eaml_ssm.SSM.load(bad / "checkpoint.pt")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_predict_on_cuda_returns_on_the_states_device(run_dir: Path) -> None:
    run = eaml_ssm.load_run(run_dir, device="cuda")
    states = torch.zeros(3, run.family.state_dim, device="cuda")
    out = run.predict(states, torch.tensor([0, 1, 0], device="cuda"))
    assert out.is_cuda and out.shape == states.shape
    cpu = eaml_ssm.load_run(run_dir, device="cpu").predict(states.cpu(), torch.tensor([0, 1, 0]))
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-5)


# --- the original project's API ------------------------------------------------------------


def test_original_ssm_signature_device_and_hidden() -> None:
    model = eaml_ssm.SSM(4, 3, 2, 32, "cpu")  # state_dim, input_dim, output_dim, hidden, device
    assert model.hidden_dim == 32 and model.device == torch.device("cpu")
    assert eaml_ssm.SSM(4, 3, 2).hidden_dim == 128  # the original's default width
    h = model.init_hidden()
    assert h.shape == (1, model.hidden_size) and not h.any()
    y, h2 = model(torch.randn(1, 3), h)
    assert y.shape == (1, 2) and h2.shape == h.shape


def test_original_ssm_save_load_round_trip(tmp_path: Path) -> None:
    model = eaml_ssm.SSM(4, 3, 2, 16, "cpu")
    model.save(tmp_path / "m.pt")
    loaded = eaml_ssm.SSM.load(tmp_path / "m.pt", "cpu")  # the original's (path, device)
    x, h = torch.randn(2, 3), model.init_hidden(2)
    torch.testing.assert_close(loaded(x, h)[0], model(x, h)[0])


def test_original_metamaml_return_types() -> None:
    model = eaml_ssm.SSM(4, 3, 2, 16)
    maml = eaml_ssm.MetaMAML(model, inner_lr=0.01, outer_lr=0.001)
    x, y = torch.randn(2, 5, 3), torch.randn(2, 5, 2)
    fast = maml.adapt_task(x, y, model.init_hidden(2))
    assert isinstance(fast, OrderedDict)
    assert list(fast) == [n for n, _ in model.named_parameters()]
    weights = maml.get_fast_weights()
    assert isinstance(weights, OrderedDict)
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    loss = maml.meta_update([(x, y, x, y)], model.init_hidden(2))
    assert isinstance(loss, float) and np.isfinite(loss)


def test_original_experience_buffer_surface() -> None:
    buf = eaml_ssm.ExperienceBuffer(100, "cpu")
    assert buf.device == torch.device("cpu") and len(buf) == 0
    assert buf.get_batch(4) is None
    buf.add(torch.randn(10, 3), torch.randn(10, 2))
    assert len(buf) == 10
    batch = buf.get_batch(4)
    assert batch is not None and batch[0].shape == (4, 3) and batch[1].shape == (4, 2)
    adapter = eaml_ssm.Adapter(
        eaml_ssm.SSM(4, 3, 2, 16), eaml_ssm.AdaptationConfig(), experience_buffer=buf, device="cpu"
    )
    assert adapter.experience_buffer is buf
