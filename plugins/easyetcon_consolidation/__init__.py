"""easyetcon built-in plugin: consolidation (EtCon's TPSFT and GRPO) and the edit rewards."""
