"""MACs per image do not depend on the batch they are counted on (kalib.macs.SAMPLE): every counted operation is
linear in it, so counting on two images gives the numbers eight gave, for every part of an amalgamation's
training MACs, a KD student's and a forward pass's. Nor do they depend on the weights, which lets a study count
them once (kalib.runs.budget.alg1_costs, kd_costs); counting leaves the network as it was."""

import copy

import pytest
import torch

from kalib.macs import SAMPLE, forward_macs_per_image
from kalib.method.baselines import kd_student
from kalib.method.filters import task_plan
from kalib.method.student import init_student, make_filters
from kalib.method.targetnet import assemble
from kalib.runs.budget import alg1_costs, amalgamation_macs, kd_costs, kd_macs, run_macs
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
    few, many = (kd_macs(kd_costs(student, teachers, plan, images[:n]), train_images=400, image_passes=1000)
                 for n in (SAMPLE, 8))
    assert few == many and few["total"] > 0
    assert forward_macs_per_image(teachers[0], to_input(images[:SAMPLE])) == \
        forward_macs_per_image(teachers[0], to_input(images)) > 0


def test_costs_counted_once_serve_other_weights_and_counting_leaves_the_network_as_it_was(smoke):
    preset, teachers, plan, images = smoke
    student = init_student("teacher1", teachers)
    filters = make_filters(student, teachers, preset.student.filter_reduction)
    other = init_student("teacher-mean", teachers)
    points = [2, 5] + [8] * (len(plan.tasks) - 2)
    settings = dict(block_images=300, block_epochs=[1, 1, 2, 2, 4, 4, 8, 8], block_batch=64, train_images=400,
                    heldout=64, target=assemble(other, filters, teachers, plan, points), finetune_images=400,
                    finetune_epochs=2, finetune_batch=32)
    counted = alg1_costs(student, filters, teachers, plan, images[:SAMPLE])
    assert len(counted["blocks"]) == 8 and all(c["step"] > 0 for c in counted["blocks"])
    fresh = amalgamation_macs(other, filters, teachers, plan, images[:SAMPLE], **settings)
    assert amalgamation_macs(other, filters, teachers, plan, images[:SAMPLE], costs=counted, **settings) == fresh
    net = kd_student(init_student("teacher1", teachers), teachers, plan).train()
    before = copy.deepcopy(net.state_dict())
    costs = kd_costs(net, teachers, plan, images[:SAMPLE])
    assert costs == kd_costs(kd_student(other, teachers, plan), teachers, plan, images[:SAMPLE])
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
