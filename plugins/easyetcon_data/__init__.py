"""easyetcon built-in plugin: edit-dataset loaders (KnowEdit, CounterFact, ZsRE, plain QA).

It registers one dataset format per file layout; reading a file and recognising its format is
the core's (:mod:`easyetcon.dataset_files`, re-exported here):

.. code-block:: python

    from easyetcon.dataset_files import load_edit_dataset

    requests = load_edit_dataset("ZsRE-test-all.json")            # format detected
    requests = load_edit_dataset("cf.json", format="counterfact", limit=100)
"""

from easyetcon.dataset_files import DatasetFormatError, detect_format, load_edit_dataset, read_records
from easyetcon_data.common import FileDatasetConfig, flatten_answers

__all__ = [
    "DatasetFormatError",
    "FileDatasetConfig",
    "detect_format",
    "flatten_answers",
    "load_edit_dataset",
    "read_records",
]
