"""easyetcon built-in plugin: edit-dataset loaders (KnowEdit, CounterFact, ZsRE, plain QA).

.. code-block:: python

    from easyetcon_data import load_edit_dataset

    requests = load_edit_dataset("ZsRE-test-all.json")            # format detected
    requests = load_edit_dataset("cf.json", format="counterfact", limit=100)
"""

from easyetcon_data.common import FileDatasetConfig, flatten_answers
from easyetcon_data.loading import DETECTION_ORDER, detect_format, load_edit_dataset
from easyetcon_data.reading import DatasetFormatError, read_records

__all__ = [
    "DETECTION_ORDER",
    "DatasetFormatError",
    "FileDatasetConfig",
    "detect_format",
    "flatten_answers",
    "load_edit_dataset",
    "read_records",
]
