"""What a Hugging Face hub id looks like, for telling one from a missing local path."""

import re

#: ``owner/name``: a model or dataset id on the hub (a missing local path of this shape goes to the hub).
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
