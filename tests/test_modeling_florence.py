"""modeling_florence contracts: positions outside the text model's table get a clear error."""

import pytest
import torch

import modeling_florence as mf
from tests.test_common import tiny_florence_config


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return mf.FlorenceModel(tiny_florence_config()).eval()


@pytest.mark.parametrize("bad", [-1, 10_000])
def test_position_ids_outside_the_table_are_refused(tiny_model, bad):
    table = tiny_model.config.text_config.max_position_embeddings
    ids = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"position_ids must lie in \[0, {table}\)"):
        tiny_model.get_text_features(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, bad]]))
    tiny_model.get_text_features(input_ids=ids, position_ids=torch.tensor([[0, 1, 2, table - 1]]))  # the last one is fine

