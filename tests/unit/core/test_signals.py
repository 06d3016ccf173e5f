import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.signals import numeric_column, numeric_columns

values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                   st.text(max_size=3), st.lists(st.integers(), max_size=2))
rows = st.lists(st.dictionaries(st.sampled_from(["a", "b", "c"]), values), max_size=30)


@settings(max_examples=300, deadline=None)
@given(rows=rows)
def test_vectorised_columns_equal_the_per_value_rule(rows):
    names = ["a", "b", "c"]
    fast = numeric_columns(rows, names)
    for n in names:
        np.testing.assert_array_equal(fast[n], numeric_column(rows, n))


def test_the_fast_path_is_taken_for_plain_numbers():
    rows = [{"a": 1.5, "b": None}, {"a": True, "b": 3}]
    cols = numeric_columns(rows, ["a", "b"])
    assert cols["a"].base is not None  # a view of one matrix, not a per-value column
    np.testing.assert_array_equal(cols["b"], [np.nan, 3.0])
