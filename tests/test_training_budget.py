"""Time-budgeted training (scripts.training_budget): the epoch arithmetic by hand, a real short ignite run
whose length follows from the measured step time, a resumed run that keeps the count it decided, and the
planner writing a budget instead of a machine's step time."""

import time

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from scripts.engines import ResumeTraining, TrainingStateSaver, prepare_landmark_batch
from scripts.losses import MaskedHeatmapMSELoss
from scripts.errors import LandmarkConfigError
from scripts.planning.decisions import determine_learning_rate, determine_training_length
from scripts.training_budget import decide_epochs, epochs_for_budget, resumed_epochs, run_seconds, time_training_steps, validation_interval

ITERATIONS = 4


def test_epochs_for_budget_by_hand():
    # 2.5 h, 50 steps of 0.6 s, validations of 30 s: 280 epochs validate every 14 -> 20 x 30 s + 280 x 30 s = 9000 s
    assert epochs_for_budget(9000, 50, 0.6, 30.0) == 280
    assert run_seconds(280, 50, 0.6, 30.0) == pytest.approx(9000) and run_seconds(281, 50, 0.6, 30.0) > 9000
    assert epochs_for_budget(3600, 10, 1.0) == 360  # no validation cost: 3600 / 10
    assert epochs_for_budget(5, 10, 1.0) == 1  # nothing fits: one epoch
    assert epochs_for_budget(1e9, 10, 1.0, max_epochs=50) == 50
    assert [validation_interval(e) for e in (1, 19, 20, 45, 280)] == [1, 1, 1, 2, 14]


class Batches(torch.utils.data.Dataset):
    """Tiny training samples: an 8^3 image, 2 heatmap channels, both annotated."""

    def __len__(self):
        return ITERATIONS * 2

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return {"image": torch.rand(1, 8, 8, 8, generator=g), "label": torch.rand(2, 8, 8, 8, generator=g), "label_mask": torch.ones(2)}


class NeverIterated(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise AssertionError("a resumed run must not measure again")


def parts():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(8, 2, 3, padding=1), torch.nn.Sigmoid())
    optimizer = torch.optim.Adam(network.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(Batches(), batch_size=2, shuffle=False)
    return network, MaskedHeatmapMSELoss(), optimizer, loader


def decide(network, loss, optimizer, loader, hours, ckpt_dir, resume=True, fallback=None):
    return decide_epochs(hours, fallback, ITERATIONS, network, loss, optimizer, loader, prepare_landmark_batch,
                           lambda image, net: net(image), [], "cpu", str(ckpt_dir), "", resume)


def trainer_for(network, loss, optimizer, loader, epochs, ckpt_dir):
    state = {"model": network, "optimizer": optimizer}
    handlers = [ResumeTraining(str(ckpt_dir), dict(state)), TrainingStateSaver(str(ckpt_dir), save_dict=dict(state), save_interval=1, n_saved=1)]
    return SupervisedTrainer(device=torch.device("cpu"), max_epochs=epochs, train_data_loader=loader, network=network, optimizer=optimizer,
                             loss_function=loss, prepare_batch=prepare_landmark_batch, train_handlers=handlers, decollate=False)


def test_a_real_run_fits_its_budget_and_a_resumed_run_keeps_its_epochs(tmp_path, caplog, one_thread):
    network, loss, optimizer, loader = parts()
    weights = {k: v.clone() for k, v in network.state_dict().items()}
    # a budget of about 5 epochs at this machine's current speed (the toy step is milliseconds alone, longer on a busy machine)
    hours = 5 * ITERATIONS * time_training_steps(network, loss, optimizer, loader, prepare_landmark_batch, "cpu") / 3600
    with caplog.at_level("INFO", logger="scripts.training_budget"):
        decision = decide(network, loss, optimizer, loader, hours, tmp_path)
    epochs = decision.epochs
    assert decision.source == "measured" and decision.validation_seconds == 0 and decision.step_seconds > 0
    assert epochs == epochs_for_budget(hours * 3600, ITERATIONS, decision.step_seconds), "the largest count that fits"
    assert "training budget" in caplog.text and f"-> {epochs} epochs x {ITERATIONS} iterations" in caplog.text
    assert all(torch.equal(v, network.state_dict()[k]) for k, v in weights.items()), "timing runs on a copy"
    assert not optimizer.state, "and with its own optimizer"
    assert epochs >= 2, "the machine slowed down threefold between two measurements"

    trainer = trainer_for(network, loss, optimizer, loader, epochs, tmp_path)
    trainer.add_event_handler(Events.EPOCH_COMPLETED(once=epochs // 2), lambda engine: engine.terminate())
    start = time.perf_counter()
    trainer.run()
    interrupted = time.perf_counter() - start
    assert trainer.state.epoch == epochs // 2 and resumed_epochs(str(tmp_path)) == epochs

    # the same command again, with another budget: the run keeps the count it decided and never measures again
    never = torch.utils.data.DataLoader(NeverIterated(), batch_size=2)
    kept = decide(network, loss, optimizer, never, 100.0, tmp_path)
    assert (kept.epochs, kept.source) == (epochs, "resumed")
    start = time.perf_counter()
    resumed = trainer_for(network, loss, optimizer, loader, epochs, tmp_path)
    resumed.run()
    elapsed = interrupted + time.perf_counter() - start
    assert resumed.state.epoch == epochs and resumed.state.iteration == epochs * ITERATIONS
    assert elapsed < 5 * hours * 3600 + 5.0, f"{epochs} epochs took {elapsed:.1f} s for a {hours * 3600:.1f} s budget"


def test_fixed_schedule_and_bad_budgets(tmp_path):
    network, loss, optimizer, _ = parts()
    never = torch.utils.data.DataLoader(NeverIterated(), batch_size=2)
    assert decide(network, loss, optimizer, never, None, tmp_path, fallback=1000).epochs == 1000
    with pytest.raises(LandmarkConfigError, match="--hours"):
        decide(network, loss, optimizer, never, None, tmp_path)
    with pytest.raises(LandmarkConfigError, match="must be positive"):
        decide(network, loss, optimizer, never, 0, tmp_path)
    with pytest.raises(LandmarkConfigError, match="a number of hours"):
        decide(network, loss, optimizer, never, "two", tmp_path)


def test_planner_writes_a_budget_not_a_step_time():
    cpu, reason = determine_training_length({}, {}, 2, "cpu")
    assert cpu == {"iterations_per_epoch": 50, "epochs": None, "training_hours": 2.5, "val_interval": None,
                   "validation_cases": 12}  # at most 12 validation cases per training-time validation (docs/planner.md rule 8)
    assert "measured" in reason and "--hours" in reason
    gpu, _ = determine_training_length({}, {}, 2, "gpu")
    assert (gpu["epochs"], gpu["training_hours"], gpu["val_interval"]) == (1000, None, 50)
    assert determine_learning_rate(50, None)[0] == 1e-3 and determine_learning_rate(250, 1000)[0] == 3e-4
