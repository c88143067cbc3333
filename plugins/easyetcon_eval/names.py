"""Names the eval plugin's command line needs before anything heavy is imported."""

#: protocol name -> version
PROTOCOLS: dict[str, int] = {"teacher-forced": 1, "teacher-forced-em": 1, "generation": 1}
METRIC_NAMES = ("reliability", "generalization", "locality", "portability", "locality_vs_truth")
DEFAULT_JUDGE = "exact-match"
