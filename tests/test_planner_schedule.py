"""Masked planning: the reveal schedule of spec §3.1 and the RNG contract of the issue (§6.2 items 5, 6)."""

import pytest
import torch

from bernini.planner.schedule import keep_counts, plan_slots, reveal_counts

SPEC_64_25 = [1, 1, 1, 1, 1, 1, 1, 1, 2, 3, 2, 3, 3, 3, 3, 3, 4, 3, 4, 4, 4, 4, 3, 4, 4]
SPEC_300_25 = [1, 2, 3, 4, 5, 7, 7, 9, 9, 11, 11, 13, 13, 14, 15, 16, 16, 17, 17, 18, 18, 18, 19, 19, 18]


def test_spec_schedules():
    assert keep_counts(8, 6) == [7, 6, 5, 4, 2, 1]
    assert reveal_counts(64, 25) == SPEC_64_25
    assert reveal_counts(300, 25) == SPEC_300_25


@pytest.mark.parametrize(("slots", "rounds"), [(8, 6), (64, 25), (300, 25), (300, 50), (2, 1), (5, 9), (1, 3)])
def test_schedule_properties(slots, rounds):
    keeps, reveals = keep_counts(slots, rounds), reveal_counts(slots, rounds)
    assert sum(reveals) == slots
    assert all(b <= a for a, b in zip(keeps, keeps[1:], strict=False))  # never increases
    masked = slots
    for index, revealed in enumerate(reveals[:-1]):
        masked -= revealed
        assert masked >= 1 or slots == 1, index  # before the last round at least one slot stays masked


class Recorder:
    """Stands in for the model passes: records what the loop hands over."""

    def __init__(self, slots: int, width: int):
        self.conditions = torch.arange(3 * slots * width, dtype=torch.float32).view(3, slots, width)
        self.rounds: list[int] = []
        self.noises: list[torch.Tensor] = []
        self.decoded_conditions: list[torch.Tensor] = []
        self.writes: list[torch.Tensor] = []

    def predict(self, index):
        self.rounds.append(index)
        return self.conditions

    def decode(self, conditions, noise):
        self.decoded_conditions.append(conditions)
        self.noises.append(noise)
        return noise * 2

    def write(self, indices, values):
        self.writes.append(indices)


@pytest.mark.parametrize("seed", [0, 1, 42, 2**40 + 3])
def test_rng_contract_order_first_then_one_draw_per_revealing_round(seed):
    slots, rounds, width = 64, 25, 6
    recorder = Recorder(slots, width)
    record = plan_slots(slots, rounds, width, seed, recorder.predict, recorder.decode, recorder.write)
    generator = torch.Generator("cpu").manual_seed(seed)
    order = torch.randperm(slots, generator=generator)
    expected_noise = [torch.randn((n, width), generator=generator) for n in SPEC_64_25 if n]
    assert recorder.rounds == list(range(rounds)) and record.reveal_counts == SPEC_64_25
    assert all(torch.equal(a, b) for a, b in zip(recorder.noises, expected_noise, strict=True))
    keeps = keep_counts(slots, rounds)
    bounds = [slots, *keeps[:-1], 0]
    for index, written in enumerate(recorder.writes):
        assert set(written.tolist()) == set(order[bounds[index + 1] : bounds[index]].tolist())
        assert torch.equal(recorder.decoded_conditions[index], recorder.conditions[:, written])


def test_every_slot_is_decoded_exactly_once_even_slot_zero_alone():
    """Bug B2: upstream skipped a round whose only revealed slot was slot 0 (sum of indices == 0)."""
    slots, rounds = 64, 25
    alone_zero = 0
    for seed in range(60):
        recorder = Recorder(slots, 2)
        plan_slots(slots, rounds, 2, seed, recorder.predict, recorder.decode, recorder.write)
        written = torch.cat(recorder.writes).tolist()
        assert sorted(written) == list(range(slots))
        alone_zero += any(w.tolist() == [0] for w in recorder.writes)
    assert alone_zero > 0, "no seed exercised the slot-0-alone round"
