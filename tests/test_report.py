import json

import pytest

from medssl.errors import MedsslError
from medssl.report.report import summarise, write_report
from medssl.report.runtime import runtime_text


def rows():
    out = [{"protocol": "pretrain", "steps": 10, "seconds": 5.0, "img_per_s": 100.0, "method": "simclr",
            "dataset": "breastmnist"}]
    for seed, (a_ssl, a_scr) in enumerate([(0.8, 0.6), (0.9, 0.7)]):
        for init, auc in (("ssl", a_ssl), ("scratch", a_scr)):
            out.append({"protocol": "finetune", "init": init, "fraction": 0.1, "seed": seed,
                        "auc": auc, "acc": 0.5, "seconds": 1.0, "method": "simclr",
                        "dataset": "breastmnist", "backbone": "resnet18_small", "width": 0.5})
    return out


def test_summary_is_mean_and_sample_std_over_seeds():
    s = summarise(rows())
    mean, std, n = s[("finetune", "ssl", 0.1)]["auc"]
    assert (mean, n) == (pytest.approx(0.85), 2)
    assert std == pytest.approx(0.0707107, abs=1e-6)  # sample std of 0.8, 0.9


def test_report_and_plot_from_results_alone(tmp_path):
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    text = write_report(tmp_path).read_text()
    assert "SSL − scratch = +0.200" in text
    assert "| 10% | fine-tuned | simclr |  | 2 | 0.850 ± 0.071 |" in text
    assert "this run saved no predictions" in text  # no intervals without them
    assert "| breastmnist | simclr | 10 | 5 | 100 | 4 |" in text  # compute: pretraining and 4 fine-tunes
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


def test_the_report_says_what_the_study_trained_in():
    old = rows()  # written before rows recorded it: nothing claimed
    assert runtime_text(old) == ""
    cpu = [{**r, "device": "cpu", "precision": "bf16"} for r in old]
    assert runtime_text(cpu) == "Trained on cpu in bf16."
    resumed = cpu[:3] + [{**r, "device": "cuda", "precision": "fp16"} for r in old[3:]]
    text = runtime_text(resumed)
    assert text.startswith("Trained on cpu in bf16 and cuda in fp16 (") and "resumed" in text


def test_bad_results_file_names_the_line(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"protocol": "x"}\nnot json\n')
    with pytest.raises(MedsslError, match=r"results\.jsonl:2: not a JSON line"):
        write_report(tmp_path)
