"""A paper preset end to end through the chapters that make its results (papermill; the solutions run on the
embedded presets only), on a fake VOC tree the test writes, made tiny with preset overrides (32 px, width-8
network, random shared init, one epoch per stage)."""

import json

from test_paper_presets import voc_tree

from kalib.data import VOC_CLASSES
from kalib.runs.pipeline import reproduce

TINY = ["data.image_size=32", "arch=resnet18_narrow", "arch_kwargs.width=8", "dense_arch=densenet_small",
        'dense_kwargs={"growth_rate": 6, "num_init_features": 12}', "teacher.epochs=1", "block.epochs=1",
        "finetune.epochs=1", "loss_slice=8", "init=random"]


# the chapters whose results this test reads: 03 (one block trained live) and 06 (the committed crossover study)
# write nothing the others or results.json need; nbval runs them on the lesson preset
CHAPTERS = ("01_teachers", "02_filters", "04_branch_out", "05_tables")


def test_paper_voc07_runs_through_the_notebooks(tmp_path):
    root = voc_tree(tmp_path / "data")
    lines = []
    results = reproduce("paper-voc07", tmp_path / "out", data_root=root, device="cpu", overrides=TINY,
                        notebooks=CHAPTERS, log=lines.append)
    assert len(lines) == 4 and all(f"[{i}/4]" in line for i, line in enumerate(lines, start=1))
    table1 = results["table1"]
    assert {"Teacher", "Target b1", "Target b4", "Target (Eq. 9)", "Target-3 (Eq. 9)", "TargetDenseNet (Eq. 9)"} <= set(table1)
    assert set(table1["Target (Eq. 9)"]) == set(VOC_CLASSES) | {"mAP"}
    assert "Target" not in table1 and all(" (" in k for k in results["params"])   # every TargetNet named by its rule
    assert results["table2"] is None, "the paper's Table 2 comes from the paper-voc12 preset"
    assert set(results["fig3"]) == {"unrelated", "related"}
    assert results["fig3"]["unrelated"]["C"] == ["bus", "diningtable"]      # a two-task student per pair
    assert set(results["fig3"]["unrelated"]["tasks"]) == {"bus", "diningtable"}
    assert set(results["alignment"]) == {"teacher 1 vs teacher 2", "teacher 1 vs start", "teacher 2 vs start"}
    figures = tmp_path / "out" / "figures"
    assert (figures / "fig3.png").is_file() and (figures / "table1.md").is_file()
    assert json.loads((tmp_path / "out" / "results.json").read_text())["timings_s"]["notebooks"]
