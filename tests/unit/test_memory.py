"""The memory estimate behind `gradient_checkpointing: auto`."""

from dreambooth_job import memory

SD15_CHANNELS = (320, 640, 1280, 1280)


def test_eight_bit_adam_keeps_a_quarter_of_the_optimizer_state():
    params = 1_000_000
    full, eight_bit = (memory.training_state_bytes(params, flag) for flag in (False, True))
    assert full - 4 * params == 4 * (eight_bit - 4 * params)


def test_activations_grow_with_images_and_area_and_double_in_fp32():
    one = memory.activation_bytes(SD15_CHANNELS, 1, 64, half_precision=True)
    assert memory.activation_bytes(SD15_CHANNELS, 2, 64, half_precision=True) == 2 * one
    assert memory.activation_bytes(SD15_CHANNELS, 1, 128, half_precision=True) == 4 * one
    assert memory.activation_bytes(SD15_CHANNELS, 1, 64, half_precision=False) == 2 * one


def test_checkpointing_only_when_the_estimate_does_not_fit():
    required = 10 * 2**30
    assert not memory.needs_checkpointing(required, free_bytes=4 * required)
    assert memory.needs_checkpointing(required, free_bytes=required)
    # The headroom is what separates "fits" from "fits exactly".
    assert memory.needs_checkpointing(required, free_bytes=required + memory.HEADROOM_BYTES)
