"""VQA processing contracts: annotator answers of every shape, and an answer vocabulary that fits the model."""

import pytest
import torch

from modeling_florence.processing_florence_vqa import build_answer_vocabulary, post_process_vqa, soft_scores

LABEL2ID = {"red": 0, "blue": 1}


def test_vqav2_answer_dicts_are_read_like_strings():
    dicts = [{"answer": "Red", "answer_confidence": "yes", "answer_id": i} for i in range(3)]
    torch.testing.assert_close(soft_scores(dicts, LABEL2ID, 2)[0], soft_scores(["red"] * 3, LABEL2ID, 2)[0])
    assert build_answer_vocabulary([dicts, ["blue"]]) == ["red", "blue"]


@pytest.mark.parametrize("answers", [None, [None, "red"], [{"confidence": "yes"}], "red", [3]])
def test_missing_or_malformed_answers_are_refused(answers):
    with pytest.raises(ValueError, match="answer"):
        soft_scores(answers, LABEL2ID, 2)


def test_a_vocabulary_shorter_than_the_model_is_refused():
    with pytest.raises(ValueError, match=r"no entry for 2 of them \(e.g. id 2\)"):
        post_process_vqa(torch.tensor([[0.0, 0.0, 5.0, 1.0]]), {0: "red", 1: "blue"}, top_k=2)
    assert post_process_vqa(torch.tensor([[0.0, 5.0]]), {0: "red", 1: "blue"})[0][0]["answer"] == "blue"
