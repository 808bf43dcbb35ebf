"""Training heads on generated NIGHTS data whose human choice follows a rule the base metric gets wrong."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import datagen
import rpmetric
from rpmetric import training
from rpmetric.models.heads import CONFIG_NAME, WEIGHTS_NAME, HeadConfig
from rpmetric.training import CHECKPOINT_NAME, DREAMSIM_BETAS, TrainConfig, hinge_loss, train_nights

SIZES = {"train": 32, "val": 12, "test": 8}


def write_learnable_nights(root: Path, seed: int = 0, sizes: Optional[Dict[str, int]] = None) -> Path:
    """NIGHTS layout where one distortion brightens the reference and the other swaps its red and
    blue channels; people always pick the brightened one, on a random side.

    The tiny random ViT mostly finds the channel swap closer (untrained val score 1/6), so a head
    must learn the rule to score above it. ``sizes`` (triplets per split) defaults to SIZES.
    """
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = [s for s, n in (sizes or SIZES).items() for _ in range(n)]
    with open(root / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(datagen.NIGHTS_HEADER)
        for n, split in enumerate(splits):
            ref = datagen.pattern(seed * 10_000 + n, (32, 32), 0.2, 0.8)
            liked, other = np.clip(ref + 0.2, 0, 1), ref[..., ::-1]
            right_liked = bool(rng.integers(2))
            left, right = (other, liked) if right_liked else (liked, other)
            paths = [f"ref/{n // 4:03d}/{n:03d}.png", f"distort/{n // 4:03d}/{n:03d}_0.png",
                     f"distort/{n // 4:03d}/{n:03d}_1.png"]
            for rel, img in zip(paths, (ref, left, right)):
                datagen.save_png(root / rel, img)
            p = 1.0 if right_liked else 0.0
            writer.writerow([f"{split}-{n}", 1.0 - p, p, 6, *paths, split, n % 2 == 0, "a photo"])
    return root


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    return write_learnable_nights(tmp_path_factory.mktemp("nights"))


def _count_backbone_images(monkeypatch, captured: list):
    """Make train_nights' encoder count the images its backbone sees, and keep it for inspection."""
    real = training.load_encoder

    def counting(model):
        encoder = real(model)
        encoder.images_seen = 0

        def hook(module, args):
            encoder.images_seen += args[0].shape[0]

        encoder.backbone.register_forward_pre_hook(hook)
        captured.append(encoder)
        return encoder

    monkeypatch.setattr(training, "load_encoder", counting)


def test_hinge_loss_by_hand():
    d0 = torch.tensor([0.5, 0.5, 0.30, 0.1])
    d1 = torch.tensor([0.2, 0.2, 0.28, 0.1])
    p = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # right preferred and d0 - d1 = 0.3 > margin: 0; left preferred: 0.05 + 0.3 = 0.35;
    # right preferred, d0 - d1 = 0.02: 0.03; tie, left preferred: 0.05
    assert hinge_loss(d0, d1, p, margin=0.05).item() == pytest.approx((0 + 0.35 + 0.03 + 0.05) / 4)


def test_mlp_training_beats_the_untrained_head_and_embeds_each_image_once(nights, vit_folder, tmp_path, monkeypatch):
    captured = []
    _count_backbone_images(monkeypatch, captured)
    config = TrainConfig(HeadConfig("mlp", hidden=64), epochs=4, batch_size=8, lr=1e-2)
    result = train_nights(nights, str(vit_folder), tmp_path / "mlp", config, progress=False, device="cpu")
    assert result.val_history[0] <= 0.25  # the base metric mostly gets the rule wrong
    assert result.val_history[result.best_epoch] >= 0.75
    # Cached embeddings: every image of every split through the backbone exactly once.
    assert captured[0].images_seen == 3 * sum(SIZES.values())
    meta = json.loads((tmp_path / "mlp" / CONFIG_NAME).read_text())
    assert meta["training"]["val_2afc"] == result.val_history[result.best_epoch]
    assert set(meta["training"]["test"]) == {"test_imagenet", "test_no_imagenet", "total"}
    # The saved head reproduces the reported val score through the evaluator.
    from rpmetric.evaluation import EncoderDistances, evaluate, load_groups

    _, groups, _ = load_groups("nights", nights, ["val"])
    evaluation = evaluate(EncoderDistances(rpmetric.RobustDistance(str(tmp_path / "mlp"), device="cpu")), "2afc", groups)
    assert evaluation.results["val"]["score"] == pytest.approx(result.val_history[result.best_epoch])


def test_adversarial_mlp_embeds_left_right_and_scored_splits_once(nights, vit_folder, tmp_path, monkeypatch):
    # Under an MLP the backbone is frozen, so only the attacked reference needs it during training.
    captured = []
    _count_backbone_images(monkeypatch, captured)
    steps = 2
    config = TrainConfig(HeadConfig("mlp", hidden=16), epochs=1, batch_size=8, adversarial="linf", attack_steps=steps)
    train_nights(nights, str(vit_folder), tmp_path / "adv", config, progress=False, device="cpu")
    # Every image once, up front; then per train reference: each PGD step and the training forward.
    assert captured[0].images_seen == 3 * sum(SIZES.values()) + SIZES["train"] * (steps + 1)


# LoRA runs are the slow ones: one uninterrupted run serves three tests. alpha = r makes the
# update's scale 1, so that two epochs on 32 triplets are enough to learn.
LORA = TrainConfig(HeadConfig("lora", r=4, alpha=4.0), epochs=2, batch_size=8, lr=1e-2, seed=7)


@pytest.fixture(scope="module")
def lora_run(nights, vit_folder, tmp_path_factory):
    """(result, the encoder train_nights trained, output folder) of an uninterrupted LoRA run."""
    captured = []
    with pytest.MonkeyPatch.context() as monkeypatch:
        _count_backbone_images(monkeypatch, captured)
        out = tmp_path_factory.mktemp("lora") / "whole"
        result = train_nights(nights, str(vit_folder), out, LORA, progress=False, device="cpu")
    return result, captured[0], out


def test_lora_training_beats_the_untrained_head(lora_run):
    result, _, out = lora_run
    assert result.val_history[result.best_epoch] > result.val_history[0]
    assert any(v.abs().sum() > 0 for k, v in load_file(str(out / WEIGHTS_NAME)).items() if "lora_B" in k)


def test_lora_training_leaves_backbone_weights_untouched(lora_run, vit_folder):
    _, encoder, _ = lora_run
    fresh = rpmetric.RobustDistance(str(vit_folder), device="cpu").encoder.backbone.state_dict()
    seen = 0
    for name, value in encoder.backbone.state_dict().items():
        if "lora_" in name:
            continue
        original = name.replace(".base_layer.", ".")  # where the LoRA wrapper put the base weights
        assert torch.equal(value, fresh[original]), name
        seen += 1
    assert seen == len(fresh)


class _Interrupt(Exception):
    pass


def test_resume_gives_the_weights_of_an_uninterrupted_run(lora_run, nights, vit_folder, tmp_path, monkeypatch):
    # LoRA with dropout: the resumed run must restore the RNG as well as the weights and Adam's state.
    whole, _, whole_out = lora_run
    real_val_score = training._Run.val_score
    calls = []

    def interrupting(self, model):
        calls.append(1)
        if len(calls) == 3:  # untrained, epoch 1, then stop while scoring epoch 2
            raise _Interrupt
        return real_val_score(self, model)

    monkeypatch.setattr(training._Run, "val_score", interrupting)
    with pytest.raises(_Interrupt):
        train_nights(nights, str(vit_folder), tmp_path / "cut", LORA, progress=False, device="cpu")
    monkeypatch.setattr(training._Run, "val_score", real_val_score)
    assert not (tmp_path / "cut" / CONFIG_NAME).exists()
    resumed = train_nights(nights, str(vit_folder), tmp_path / "cut", LORA, resume=True, progress=False,
                           device="cpu")
    assert resumed.val_history == whole.val_history
    a, b = load_file(str(whole_out / WEIGHTS_NAME)), load_file(str(tmp_path / "cut" / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last_a = torch.load(whole_out / CHECKPOINT_NAME, weights_only=True)["head"]
    last_b = torch.load(tmp_path / "cut" / CHECKPOINT_NAME, weights_only=True)["head"]
    assert all(torch.equal(last_a[k], last_b[k]) for k in last_a)


def test_run_folder_errors(nights, vit_folder, tmp_path):
    config = TrainConfig(HeadConfig("mlp", hidden=8), epochs=1, batch_size=64)
    # As eval's resume without its log: a new run starts, with a warning.
    with pytest.warns(UserWarning, match="no checkpoint to resume in .*checkpoint.pt; starting a new run"):
        train_nights(nights, str(vit_folder), tmp_path, config, resume=True, progress=False, device="cpu")
    with pytest.raises(ValueError, match="already holds a training run"):
        train_nights(nights, str(vit_folder), tmp_path, config, progress=False, device="cpu")
    other = TrainConfig(HeadConfig("mlp", hidden=8), epochs=1, batch_size=64, lr=1e-2)
    with pytest.raises(ValueError, match=r"different run \(it differs in config\)"):
        train_nights(nights, str(vit_folder), tmp_path, other, resume=True, progress=False, device="cpu")


def test_head_trained_on_a_relative_model_path_loads_from_another_directory(nights, vit_folder, tmp_path,
                                                                           monkeypatch):
    monkeypatch.chdir(vit_folder.parent)
    config = TrainConfig(HeadConfig("mlp", hidden=8), epochs=1, batch_size=64)
    train_nights(nights, vit_folder.name, tmp_path / "head", config, progress=False, device="cpu")
    assert json.loads((tmp_path / "head" / CONFIG_NAME).read_text())["base_model"] == str(vit_folder.resolve())
    monkeypatch.chdir(tmp_path)
    rpmetric.RobustDistance(str(tmp_path / "head"), device="cpu")


@pytest.mark.parametrize("kwargs, match", [
    (dict(adversarial="l2"), r"`adversarial` must be one of \('linf',\) or None, but got 'l2'"),
    (dict(batch_size=0), r"`batch_size` must be at least 1, but got 0"),
    (dict(attack_steps=0), r"`attack_steps` must be at least 1, but got 0"),
    (dict(eps=0), r"`eps` must be positive"),
    (dict(lr=float("inf")), r"`lr` must be a finite number >= 0, but got inf"),
    (dict(margin=float("nan")), r"`margin` must be a finite number >= 0, but got nan"),
    (dict(weight_decay=-1e-4), r"`weight_decay` must be a finite number >= 0, but got -0.0001"),
])
def test_train_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(HeadConfig("mlp"), **kwargs)


def test_train_config_counts_must_be_integers():
    with pytest.raises(TypeError, match=r"`epochs` must be an integer, but got 1.5"):
        TrainConfig(HeadConfig("mlp"), epochs=1.5)


def test_pgd_stays_in_the_ball_and_raises_the_loss(vit_folder):
    from rpmetric.attacks.logits import TwoAFCLogits

    encoder = rpmetric.RobustDistance(str(vit_folder), device="cpu").encoder
    gen = torch.Generator().manual_seed(0)
    ref, left, right = (torch.rand(6, 3, 32, 32, generator=gen) for _ in range(3))
    with torch.no_grad():
        f_left, f_right = encoder(left), encoder(right)
        logits = TwoAFCLogits(encoder, f_left, f_right)
        p = (logits(ref).argmax(1) == 0).double()  # people disagree with the clean decision
    run = training._Run(TrainConfig(HeadConfig("mlp"), adversarial="linf", eps=8, attack_steps=5), {}, "cpu", False)
    attacked = run.attack(encoder, ref, f_left, f_right, p)
    assert (attacked - ref).abs().max() <= 8 / 255 + 1e-6 and attacked.min() >= 0 and attacked.max() <= 1
    labels = p.long()
    with torch.no_grad():
        before = torch.nn.functional.cross_entropy(logits(ref), labels)
        after = torch.nn.functional.cross_entropy(logits(attacked), labels)
    assert after > before


def test_cli_train_then_eval_and_attack_the_head(nights, vit_folder, tmp_path, capsys):
    from rpmetric.attacks.evaluate import evaluate_attack
    from rpmetric.cli import main

    out = tmp_path / "head"
    code = main(["train", "nights", str(nights), "--model", str(vit_folder), "--head", "mlp", "--out", str(out),
                 "--epochs", "1", "--hidden", "16", "--adversarial", "linf", "--attack-steps", "2", "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "val (untrained)" in printed and f"--model {out}" in printed
    meta = json.loads((out / CONFIG_NAME).read_text())
    assert meta["training"]["adversarial"] == "linf" and meta["head"] == {"type": "mlp", "dim": 24, "hidden": 16}
    assert main(["eval", "nights", str(nights), "--model", str(out), "--split", "val", "--workers", "0",
                 "--device", "cpu"]) == 0
    assert "val" in capsys.readouterr().out
    from rpmetric.datasets import read_nights

    result = evaluate_attack(rpmetric.RobustDistance(str(out), device="cpu"), read_nights(nights, "val")[:4],
                             steps=2, progress=False)
    assert 0.0 <= result.robust_accuracy <= result.clean_accuracy <= 1.0


def test_cli_reports_a_bad_head_choice(capsys):
    from rpmetric.cli import main

    with pytest.raises(SystemExit):
        main(["train", "nights", "x", "--model", "m", "--head", "linear", "--out", "o"])
    assert "invalid choice: 'linear'" in capsys.readouterr().err


def test_untrained_head_is_saved_when_no_epoch_beats_it(nights, vit_folder, tmp_path, monkeypatch):
    # Val gets worse every epoch, so epoch 0 (the untrained head) is kept: its fc2 is zero by
    # construction, whatever the optimiser did to the live weights afterwards.
    scores = iter([0.9, 0.5, 0.4])
    monkeypatch.setattr(training._Run, "val_score", lambda self, model: next(scores))
    config = TrainConfig(HeadConfig("mlp", hidden=16), epochs=2, batch_size=8, lr=1e-2)
    result = train_nights(nights, str(vit_folder), tmp_path / "mlp", config, progress=False, device="cpu")
    assert result.best_epoch == 0
    saved = load_file(str(tmp_path / "mlp" / WEIGHTS_NAME))
    assert torch.count_nonzero(saved["mlp_head.fc2.weight"]) == 0
    best = torch.load(tmp_path / "mlp" / CHECKPOINT_NAME, weights_only=True)["best_head"]
    assert torch.count_nonzero(best["mlp_head.fc2.weight"]) == 0
    last = torch.load(tmp_path / "mlp" / CHECKPOINT_NAME, weights_only=True)["head"]
    assert torch.count_nonzero(last["mlp_head.fc2.weight"]) > 0  # training did move the weights


@pytest.mark.parametrize("head", ["mlp", "lora"])
def test_cli_defaults_are_the_recipe_s(head):
    from rpmetric.cli import build_parser
    from rpmetric.cli.train import config_from_args

    args = build_parser().parse_args(["train", "nights", "x", "--model", "m", "--head", head, "--out", "o"])
    assert config_from_args(args) == TrainConfig(HeadConfig(head))


def test_cli_refuses_a_zero_count_by_option_name(capsys):
    from rpmetric.cli import main

    with pytest.raises(SystemExit):
        main(["train", "nights", "x", "--model", "m", "--head", "mlp", "--out", "o", "--epochs", "0"])
    assert "--epochs: must be at least 1, but got 0" in capsys.readouterr().err


def test_adam_gets_dreamsim_s_betas_and_the_record_has_them(nights, vit_folder, tmp_path):
    # DreamSim's train.py builds Adam(betas=(0.5, 0.999)); torch's default would be (0.9, 0.999).
    config = TrainConfig(HeadConfig("mlp", hidden=8), epochs=1, batch_size=64)
    train_nights(nights, str(vit_folder), tmp_path / "mlp", config, progress=False, device="cpu")
    optimizer = torch.load(tmp_path / "mlp" / CHECKPOINT_NAME, weights_only=True)["optimizer"]
    assert [tuple(g["betas"]) for g in optimizer["param_groups"]] == [(0.5, 0.999)]
    assert json.loads((tmp_path / "mlp" / CONFIG_NAME).read_text())["training"]["betas"] == [0.5, 0.999]


def test_cli_betas_reach_the_optimizer(nights, vit_folder, tmp_path):
    from rpmetric.cli import main

    out = tmp_path / "head"
    assert main(["train", "nights", str(nights), "--model", str(vit_folder), "--head", "mlp", "--out", str(out),
                 "--epochs", "1", "--hidden", "8", "--betas", "0.8", "0.99", "--device", "cpu"]) == 0
    optimizer = torch.load(out / CHECKPOINT_NAME, weights_only=True)["optimizer"]
    assert tuple(optimizer["param_groups"][0]["betas"]) == (0.8, 0.99)


@pytest.mark.parametrize("betas", [(0.5,), (1.0, 0.999), (0.5, -0.1)])
def test_train_config_refuses_bad_betas(betas):
    with pytest.raises(ValueError, match=r"`betas` must be two numbers in \[0, 1\)"):
        TrainConfig(HeadConfig("mlp"), betas=betas)


def test_head_folder_top_level_is_what_to_upload(nights, vit_folder, tmp_path, capsys):
    from rpmetric.cli import main

    out = tmp_path / "head"
    assert main(["train", "nights", str(nights), "--model", str(vit_folder), "--head", "mlp", "--out", str(out),
                 "--epochs", "1", "--hidden", "8", "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(["README.md", CONFIG_NAME, WEIGHTS_NAME, "checkpoint"])
    assert (out / "checkpoint" / "checkpoint.pt").is_file()
    printed = capsys.readouterr().out
    assert f"upload README.md (its model card), {CONFIG_NAME} and {WEIGHTS_NAME}, not checkpoint/" in printed
    assert "--exclude 'checkpoint/*'" in printed


def test_resume_reads_a_checkpoint_in_the_old_place(nights, vit_folder, tmp_path):
    # rpmetric 0.1.0 wrote DIR/checkpoint.pt and recorded no betas (it used torch's (0.9, 0.999)).
    old = TrainConfig(HeadConfig("mlp", hidden=8), epochs=1, batch_size=64, betas=(0.9, 0.999))
    out = tmp_path / "mlp"
    train_nights(nights, str(vit_folder), out, old, progress=False, device="cpu")
    state = torch.load(out / CHECKPOINT_NAME, weights_only=True)
    del state["settings"]["config"]["betas"]
    torch.save(state, out / "checkpoint.pt")
    (out / CHECKPOINT_NAME).unlink()
    with pytest.raises(ValueError, match=r"already holds a training run \(checkpoint.pt\)"):
        train_nights(nights, str(vit_folder), out, old, progress=False, device="cpu")
    with pytest.raises(ValueError, match=r"different run \(it differs in config\)"):  # the default betas differ
        train_nights(nights, str(vit_folder), out, replace(old, betas=DREAMSIM_BETAS, epochs=2), resume=True,
                     progress=False, device="cpu")
    result = train_nights(nights, str(vit_folder), out, replace(old, epochs=2), resume=True, progress=False,
                          device="cpu")
    assert len(result.val_history) == 3 and result.val_history[:2] == state["history"]
    assert not (out / "checkpoint.pt").exists() and (out / CHECKPOINT_NAME).is_file()


def test_cli_warns_when_no_epoch_beats_the_untrained_head(nights, vit_folder, tmp_path, monkeypatch, capsys):
    from rpmetric.cli import main

    scores = iter([0.9, 0.5])
    monkeypatch.setattr(training._Run, "val_score", lambda self, model: next(scores))
    assert main(["train", "nights", str(nights), "--model", str(vit_folder), "--head", "mlp", "--out",
                 str(tmp_path / "head"), "--epochs", "1", "--hidden", "8", "--device", "cpu"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("rpmetric")]  # not tqdm's
    assert err == ["rpmetric train: warning: no epoch beat the untrained head on val (90.00%), so the head written is "
                   "the untrained one; try another --lr or more --epochs."]


def test_cli_does_not_warn_when_an_epoch_beats_the_untrained_head(nights, vit_folder, tmp_path, monkeypatch, capsys):
    from rpmetric.cli import main

    scores = iter([0.5, 0.9])
    monkeypatch.setattr(training._Run, "val_score", lambda self, model: next(scores))
    assert main(["train", "nights", str(nights), "--model", str(vit_folder), "--head", "mlp", "--out",
                 str(tmp_path / "head"), "--epochs", "1", "--hidden", "8", "--device", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("extra, named", [
    (["--eps", "8"], "--eps only applies"),
    (["--attack-steps", "3"], "--attack-steps only applies"),
    (["--eps", "8", "--attack-steps", "3"], "--eps and --attack-steps only apply"),
])
def test_cli_refuses_attack_options_without_adversarial(tmp_path, capsys, extra, named):
    from rpmetric.cli import main

    code = main(["train", "nights", str(tmp_path), "--model", "m", "--head", "mlp", "--out", str(tmp_path / "o"),
                 *extra])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert named in err and "add --adversarial linf" in err
