import pytest
import torch

from trl_realign.modeling.realign_lambda import check_realign_lambda


def test_numbers_lists_and_tensors_are_normalised():
    assert check_realign_lambda(1) == 1.0 and isinstance(check_realign_lambda(1), float)
    assert check_realign_lambda(torch.tensor(0.25)) == 0.25
    per_row = check_realign_lambda([0.0, 0.5, 2], batch_size=3)
    assert per_row.dtype == torch.float32 and per_row.tolist() == [0.0, 0.5, 2.0]
    assert check_realign_lambda(torch.tensor([1, 2]), batch_size=2).dtype == torch.float32
    assert check_realign_lambda(torch.tensor([0.5, 1.5], dtype=torch.float64)).dtype == torch.float32


@pytest.mark.parametrize(
    "value,batch_size,error,match",
    [
        (float("nan"), None, ValueError, "finite"),
        ([0.5, float("inf")], None, ValueError, "finite"),
        ([0.5, 0.5], 3, ValueError, "2 values but the batch has 3 rows"),
        (torch.ones(3, 1), 3, ValueError, "1-D tensor"),
        ("0.5", None, TypeError, "number or a tensor"),
        (True, None, TypeError, "number or a tensor"),
        (torch.tensor([True]), 1, TypeError, "number or a tensor"),
    ],
)
def test_bad_values_are_refused(value, batch_size, error, match):
    with pytest.raises(error, match=match):
        check_realign_lambda(value, batch_size)


@pytest.mark.parametrize("value", [10**400, -(10**400), [0.5, 10**400]])
def test_lambda_beyond_float_range_is_a_value_error(value):
    from trl_realign.modeling.realign_lambda import check_realign_lambda

    with pytest.raises(ValueError, match="finite"):
        check_realign_lambda(value)
