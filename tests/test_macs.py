"""MACs per image do not depend on the batch they are counted on (kalib.macs.SAMPLE): every counted operation is
linear in it, so counting on two images gives the numbers eight gave, for every part of an amalgamation's
training MACs, a KD student's and a forward pass's."""

import pytest

from kalib.macs import SAMPLE, forward_macs_per_image
from kalib.method.baselines import kd_student
from kalib.method.filters import task_plan
from kalib.method.student import init_student
from kalib.runs.budget import kd_macs, run_macs
from kalib.runs.presets import get_preset
from kalib.runs.state import load_teachers, teacher_files
from kalib.train import to_input


@pytest.fixture(scope="module")
def smoke(smoke_teachers, smoke_bench):
    preset = get_preset("smoke")
    teachers, labels = load_teachers(teacher_files(preset, smoke_teachers, "2")[1])
    return preset, teachers, task_plan(None, labels), smoke_bench.pool_images[:8]


@pytest.mark.parametrize("branch", ["b1_1", "b2_2", "b4_2"])
def test_an_amalgamation_s_training_macs_are_the_same_counted_on_two_images_or_eight(smoke, branch):
    preset, teachers, plan, images = smoke
    blocks = [branch] * len(plan.tasks)
    few, many = (run_macs(preset, teachers, plan, blocks, images[:n], train_images=400) for n in (SAMPLE, 8))
    assert SAMPLE < 8 and few == many and few["blocks"] > 0 and few["finetune"] > 0


def test_kd_and_forward_macs_are_the_same_counted_on_two_images_or_eight(smoke):
    preset, teachers, plan, images = smoke
    student = kd_student(init_student("teacher1", teachers), teachers, plan)
    few, many = (kd_macs(student, teachers, plan, images[:n], train_images=400, image_passes=1000)
                 for n in (SAMPLE, 8))
    assert few == many and few["total"] > 0
    assert forward_macs_per_image(teachers[0], to_input(images[:SAMPLE])) == \
        forward_macs_per_image(teachers[0], to_input(images)) > 0
