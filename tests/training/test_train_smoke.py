"""The training entry points run end to end on a few real images (one epoch) and write their artefacts."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def test_segmenter_smoke(data_dir):
    from training.train_segmenter import main

    metrics = main(["--manifest", str(data_dir / "manifest.csv"), "--epochs", "1", "--limit", "16"])
    assert set(metrics["test"]) == {"iou", "dice", "n"} and 0 <= metrics["test"]["iou"] <= 1
    assert len(metrics["history"]) == 1


def _segmenter_config(tmp_path, model: str, size: int, **extra) -> Path:
    """A one-epoch segmenter experiment config at ``size`` px."""
    config = {"model": model, "input_size": size, "epochs": 1, "batch_size": 4, "lr": 0.001,
              "weight_decay": 0.0001, "seed": 1, "threads": 2, **extra}
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_segmenter_trains_at_a_config_input_size_with_workers_and_a_seed_override(data_dir, tmp_path):
    from training.train_segmenter import main

    config = _segmenter_config(tmp_path, "lung_resunet18", 128, workers=2)
    metrics = main(["--config", str(config), "--manifest", str(data_dir / "manifest.csv"), "--limit", "8",
                    "--seed", "5"])
    assert metrics["input_size"] == [128, 128] and metrics["test"]["n"] == 8
    assert metrics["config"]["seed"] == 5


@pytest.mark.parametrize("model, size", [("lung_resunet18", 384), ("lung_resunet34", 256)])
def test_ship_refuses_weights_the_server_cannot_run(data_dir, tmp_path, monkeypatch, model, size):
    import training.common
    from training.train_segmenter import main

    monkeypatch.setattr(training.common, "WEIGHTS_DIR", tmp_path / "weights")  # a broken guard must not touch weights/
    (tmp_path / "weights").mkdir()
    config = _segmenter_config(tmp_path, model, size)
    argv = ["--config", str(config), "--manifest", str(data_dir / "manifest.csv"), "--limit", "4", "--ship"]
    refused = rf"--ship refused: lung_unet_mobilenetv2.pt is served as lung_unet_mobilenetv2 at \(256, 256\), but this run trains {model} at \({size}, {size}\)"
    with pytest.raises(SystemExit, match=refused):
        main(argv)
    assert not list((tmp_path / "weights").iterdir())


def test_classifier_smoke(data_dir):
    from training.train_classifier import main

    metrics = main(["--manifest", str(data_dir / "manifest.csv"), "--epochs", "1", "--limit", "24"])
    report = metrics["test"]
    assert report["n"] == 24 and len(report["confusion_matrix"]) == 5
    assert {"accuracy", "macro_f1", "per_class", "by_cohort", "calibration"} <= set(report)
    assert metrics["temperature"] > 0 and metrics["train_seconds"] >= 0
    json.dumps(metrics)  # serialisable as written to metrics.json


def test_classifier_stopped_mid_run_resumes_from_its_checkpoint(data_dir, tmp_path, monkeypatch):
    """Two manifests (the second without masks), a run killed in its second epoch, then ``--resume``: the
    finished run has both epochs, the first one as it was before the stop, and calibrated weights."""
    import torch

    import training.train_classifier as trainer
    from training.common import load_weights
    from training.data.manifest import KERMANY224_MANIFEST
    from training.models import create_model

    head = (data_dir / "manifest.csv").read_text().splitlines()[0]
    rows = [line for line in KERMANY224_MANIFEST.read_text().splitlines()[1:] if "person" in line][:40]
    small = tmp_path / "k224.csv"  # 40 mask-less kermany224 rows, image paths made absolute
    small.write_text(head + "\n" + "\n".join(f"{KERMANY224_MANIFEST.parent}/{r}" for r in rows) + "\n")
    run = tmp_path / "run"
    run.mkdir()
    argv = ["--manifest", str(data_dir / "manifest.csv"), "--manifest", str(small), "--epochs", "2", "--limit", "60",
            "--resume", str(run)]
    real_epoch, calls = trainer.train_epoch, []

    def stop_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("stopped")
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        trainer.main(argv)
    first = torch.load(run / "checkpoint.pt", weights_only=False)["history"]
    assert [h["epoch"] for h in first] == [1]
    monkeypatch.setattr(trainer, "train_epoch", real_epoch)
    metrics = trainer.main(argv)
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and metrics["history"][0] == first[0]
    assert set(metrics["test"]["by_cohort"]) <= {"cohen", "kermany", "kermany224"}
    model = create_model(metrics["model"], num_classes=5)
    assert load_weights(model, run / f"{metrics['model']}.pt")["temperature"] == metrics["temperature"]


def test_ensemble_joins_trained_members_and_reports_each_on_val(data_dir, tmp_path):
    """Members' weights files in, one ensemble weights file out; val picks among members and ensemble."""
    import numpy as np
    import torch

    from training.common import load_weights, save_weights
    from training.ensemble import main
    from training.models import create_model

    argv = ["--model", "mobilenetv2_mdconv_resnet18_half", "--manifest", str(data_dir / "manifest.csv"), "--limit", "24"]
    for seed, name in enumerate(("mobilenetv2_mdconv", "resnet18_half")):
        torch.manual_seed(seed)
        save_weights(create_model(name, num_classes=5), tmp_path / f"{name}.pt",
                     {"model": name, "epoch": 3, "val_macro_f1": 0.5, "temperature": 1.5})
        argv += ["--member", f"{name}={tmp_path / name}.pt"]
    metrics = main(argv)
    assert set(metrics["val"]["candidates"]) == {"mobilenetv2_mdconv", "resnet18_half", "mobilenetv2_mdconv_resnet18_half"}
    assert metrics["val_choice"] in metrics["val"]["candidates"] and metrics["test"]["n"] == 24
    assert metrics["members"]["resnet18_half"]["epoch"] == 3 and metrics["temperature"] > 0
    joined = create_model("mobilenetv2_mdconv_resnet18_half", num_classes=5).eval()
    meta = load_weights(joined, Path(metrics["run_dir"]) / "mobilenetv2_mdconv_resnet18_half.pt")
    assert meta["temperature"] == metrics["temperature"]
    member = create_model("resnet18_half", num_classes=5).eval()
    load_weights(member, tmp_path / "resnet18_half.pt")
    x = torch.randn(1, 1, 256, 256)
    with torch.no_grad():
        np.testing.assert_allclose(joined.members["resnet18_half"](x).numpy(), member(x).numpy(), atol=1e-5)
    with pytest.raises(SystemExit, match="has members"):
        main(argv[:-2])
    # resnet18 and resnet18_half share every parameter name: only the file's metadata tells them apart
    save_weights(create_model("resnet18", num_classes=5), tmp_path / "resnet18.pt", {"model": "resnet18"})
    with pytest.raises(SystemExit, match="holds 'resnet18' weights, not 'resnet18_half'"):
        main([*argv[:-1], f"resnet18_half={tmp_path / 'resnet18.pt'}"])
    with pytest.raises(SystemExit, match="not with --ship|refused with --limit"):
        main([*argv, "--ship"])
    # two seeds of one architecture: members keyed apart, each file checked against the architecture
    seeds = main(["--model", "resnet18_half_x2", "--manifest", str(data_dir / "manifest.csv"), "--limit", "24",
                  "--member", f"seed_a={tmp_path / 'resnet18_half.pt'}", "--member", f"seed_b={tmp_path / 'resnet18_half.pt'}"])
    assert set(seeds["val"]["candidates"]) == {"seed_a", "seed_b", "resnet18_half_x2"}


def test_cascade_stage2_smoke(data_dir):
    from training.train_cascade import main

    metrics = main(["--manifest", str(data_dir / "manifest.csv"), "--epochs", "1", "--limit", "16"])
    report = metrics["test"]
    assert report["labels"] == ["other_viral", "covid"] and report["n"] == 16
    assert len(metrics["history"]) == 1 and metrics["history"][0]["train_loss"] > 0


def test_report_trains_then_loads_and_writes_the_table(data_dir, tmp_path):
    from benchmarks.report import main

    argv = ["--models", "mobilenetv2", "--size", "64", "--epochs", "1", "--limit", "24",
            "--manifest", str(data_dir / "manifest.csv"), "--out", str(tmp_path)]
    rows = main(argv)
    assert rows[0]["model"] == "mobilenetv2" and rows[0]["test"]["n"] == 24 and rows[0]["params_m"] > 2
    table = (tmp_path / "report.md").read_text()
    assert "| mobilenetv2 | 64 | 1 |" in table and (tmp_path / "mobilenetv2_roc_test.png").exists()
    assert main(argv) == rows  # the second call loads, it does not retrain


def test_score_segmenter_on_both_grids_agrees_with_the_trainer_at_the_served_size(data_dir):
    from cxr.specs import LUNG_SEGMENTATION
    from training.common import WEIGHTS_DIR, load_weights
    from training.data.datasets import SegmentationDataset
    from training.data.manifest import read_manifest
    from training.models import create_model
    from training.score_segmenter import score
    from training.train_segmenter import evaluate

    weights = WEIGHTS_DIR / LUNG_SEGMENTATION.weights
    manifest = str(data_dir / "manifest.csv")
    at_served = score(weights, 256, manifest=manifest, limit=6)
    assert at_served["own_grid"] == at_served["served_grid"]  # same grid: resizing to it changes nothing
    model = create_model(LUNG_SEGMENTATION.name)
    load_weights(model, weights)
    records = [r for r in read_manifest(manifest, "test") if r.mask is not None][:6]
    assert at_served["own_grid"] == evaluate(model, SegmentationDataset(records, LUNG_SEGMENTATION))
    at_192 = score(weights, 192, manifest=manifest, limit=6)
    assert at_192["served_grid"]["n"] == 6 and 0.5 < at_192["served_grid"]["iou"] < 1
    assert at_192["served_grid"] != at_192["own_grid"]


def test_seeded_report_trains_each_model_per_seed_and_gives_mean_and_sd(data_dir, tmp_path):
    from benchmarks.report import main

    argv = ["--models", "mobilenetv2", "--size", "64", "--epochs", "1", "--limit", "24", "--seeds", "1", "2",
            "--manifest", str(data_dir / "manifest.csv"), "--out", str(tmp_path)]
    rows = main(argv)
    assert [r["seed"] for r in rows] == [1, 2]
    table = (tmp_path / "seeded.md").read_text()
    assert "| mobilenetv2 | 64 | 1 | 2 |" in table and " +- " in table
    assert main(argv) == rows  # cached per seed
    partial = main([*argv[:-4], "--seeds", "1", "2", "3", "--only-cached", *argv[-4:]])  # seed 3 never ran: not trained
    assert partial == rows and "| mobilenetv2 | 64 | 1 | 2 |" in (tmp_path / "seeded.md").read_text()
    with_cost = main([*argv, "--cost"])
    assert with_cost == rows
    cost = json.loads((tmp_path / "seeded.json").read_text())["img_s"]
    assert cost["mobilenetv2"] > 0 and "CPU: " in (tmp_path / "seeded.md").read_text()


def test_distillation_targets_are_the_teachers_cleaned_masks_of_unlabelled_images(data_dir, tmp_path):
    """``pseudo_labels``: train images without a lung mask, each paired with the teacher's post-processed mask."""
    import numpy as np
    import torch

    from cxr.lungmask import postprocess_mask
    from cxr.specs import LUNG_SEGMENTATION
    from training.common import load_weights
    from training.config import TrainConfig
    from training.data.manifest import read_manifest
    from training.models import create_model
    from training.train_segmenter import teacher_labelled

    cfg = TrainConfig.from_yaml(_segmenter_config(tmp_path, "lung_unet_mobilenetv2", 256, pseudo_labels=3,
                                                  teacher="lung_resunet18", teacher_weights="weights/lung_resunet18.pt"))
    manifest = data_dir / "manifest.csv"
    data = teacher_labelled(cfg, LUNG_SEGMENTATION, [manifest])
    unlabelled = [r for r in read_manifest(manifest, "train") if r.mask is None]
    assert len(data) == 3 and all(r in unlabelled for r in data.records)
    teacher = create_model("lung_resunet18").eval()
    load_weights(teacher, Path(__file__).resolve().parents[2] / "weights" / "lung_resunet18.pt")
    with torch.no_grad():
        logits = teacher(torch.from_numpy(data.cache.prepare.normalise(data.cache.images[0]))[None])
    expected = postprocess_mask((logits[0, 0] > 0).numpy().astype(np.uint8))
    assert np.array_equal(data.masks[0], expected) and expected.sum() > 0
    assert data.geometric is not None  # augmented like the labelled images


def test_classifier_fine_tunes_from_init_from_weights(tmp_path):
    """``init_from`` starts the classifier (and its EMA copy) from earlier weights: the FixRes recipe loads the
    128 px ``resnet18_half`` weights into ``resnet18``, the same network without input pooling."""
    import torch

    from training.common import save_weights
    from training.config import TrainConfig
    from training.models import create_model
    from training.train_classifier import Trainer

    earlier = create_model("resnet18_half", num_classes=5)
    save_weights(earlier, tmp_path / "earlier.pt", {"model": "resnet18_half"})
    cfg = TrainConfig(model="resnet18", epochs=1, batch_size=2, lr=1e-3, weight_decay=0.0, seed=0, ema_decay=0.99,
                      init_from=str(tmp_path / "earlier.pt"))
    trainer = Trainer(cfg, steps=4)
    fresh = Trainer(TrainConfig(**{**cfg.to_dict(), "init_from": None}), steps=4)
    for name, value in earlier.state_dict().items():
        loaded = trainer.model.state_dict()[name]  # the file holds float16
        assert torch.equal(loaded, value.half().to(loaded.dtype) if value.is_floating_point() else value), name
        assert torch.equal(trainer.ema.state_dict()[name], trainer.model.state_dict()[name]), name
    assert not torch.equal(fresh.model.state_dict()["backbone.fc.weight"], earlier.state_dict()["backbone.fc.weight"])


def test_classifier_trains_under_bf16_autocast_with_fp32_weights():
    """``autocast: bf16``: the training forward pass computes in bfloat16 (seen at the first convolution), the
    weights stay FP32 and are updated; without it the forward pass is FP32."""
    import torch

    from training.config import TrainConfig
    from training.train_classifier import Trainer, train_epoch

    batches = [(torch.randn(2, 1, 64, 64), torch.ones(2, 1, 64, 64), torch.tensor([0, 3]))] * 2
    for autocast, expected in (("bf16", torch.bfloat16), (None, torch.float32)):
        cfg = TrainConfig(model="resnet18", epochs=1, batch_size=2, lr=1e-3, weight_decay=0.0, seed=0, autocast=autocast)
        trainer = Trainer(cfg, steps=len(batches))
        seen = []
        trainer.model.backbone.conv1.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
        before = trainer.model.backbone.conv1.weight.detach().clone()
        loss = train_epoch(trainer, batches, cfg, torch.Generator().manual_seed(0), "smoke")
        assert seen == [expected] * len(batches) and math.isfinite(loss)
        assert trainer.model.backbone.conv1.weight.dtype == torch.float32
        assert not torch.equal(trainer.model.backbone.conv1.weight, before)


def test_batch_mixing_mixes_image_and_mask_together_with_soft_targets():
    """``mixup_alpha`` / ``cutmix_alpha``: every batch (``mix_prob: 1``) is mixed with its reverse by timm's
    Mixup; the lung mask rides in the same tensor, so a CutMix box lands on image and mask alike; the loss is the
    soft-target cross-entropy and the weights are updated. MoEx models refuse it."""
    import numpy as np
    import torch

    from training.config import TrainConfig
    from training.train_classifier import Trainer, batch_mixer, train_epoch

    np.random.seed(0)
    cfg = TrainConfig(model="resnet18", epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, seed=0,
                      cutmix_alpha=1.0, mix_prob=1.0, label_smoothing=0.1)
    image = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 32, 32).contiguous()
    mixed, soft = batch_mixer(cfg)(torch.cat([image, image.clone()], dim=1), torch.tensor([0, 1, 2, 3]))
    assert torch.equal(mixed[:, 0], mixed[:, 1])  # image and mask cut alike
    assert torch.equal(torch.unique(mixed[0]), torch.tensor([0.0, 3.0]))  # sample 0 holds a box of sample 3
    assert torch.allclose(soft.sum(1), torch.ones(4)) and (soft[0, 3] > soft[0, 1])

    batches = [(torch.randn(4, 1, 64, 64), torch.zeros(4, 1, 64, 64), torch.tensor([0, 1, 2, 3]))] * 2
    trainer = Trainer(cfg, steps=len(batches))
    before = trainer.model.backbone.conv1.weight.detach().clone()
    assert math.isfinite(train_epoch(trainer, batches, cfg, torch.Generator().manual_seed(0), "mix"))
    assert not torch.equal(trainer.model.backbone.conv1.weight, before)

    seme = TrainConfig(model="seme_resnet18_slim", epochs=1, batch_size=4, lr=1e-3, weight_decay=0.0, seed=0,
                       mixup_alpha=0.2)
    with pytest.raises(ValueError, match="batch mixing .* and MoEx do not combine"):
        train_epoch(Trainer(seme, steps=1), batches, seme, torch.Generator(), "mix")


def test_hflip_mirrors_the_training_image_and_its_mask():
    import numpy as np

    from training.data.datasets import geometric_augment

    image = np.zeros((8, 8), np.float32)
    image[:, :2] = 1.0
    out = geometric_augment(p=0.0, hflip_p=1.0)(image=image, mask=(image > 0).astype(np.uint8))
    assert out["image"][:, -2:].all() and not out["image"][:, :-2].any()
    assert np.array_equal(out["mask"], (out["image"] > 0).astype(np.uint8))


@pytest.mark.parametrize("power, shares", [(0.0, [0.60, 0.30, 0.10]), (0.5, [0.473, 0.334, 0.193]), (1.0, [1 / 3] * 3)])
def test_label_balanced_sampler_draws_labels_as_count_to_the_one_minus_power(power, shares):
    """Labels of 600 / 300 / 100 images: drawn as the data has them (0), by square root (0.5), equally (1)."""
    import numpy as np
    import torch

    from training.data.datasets import label_balanced_sampler

    targets = [0] * 600 + [1] * 300 + [2] * 100
    sampler = label_balanced_sampler(targets, power, torch.Generator().manual_seed(0))
    draws = np.concatenate([[targets[i] for i in sampler] for _ in range(20)])  # 20 epochs of 1,000 draws
    assert len(list(sampler)) == len(targets)
    assert np.allclose(np.bincount(draws) / len(draws), shares, atol=0.01)
