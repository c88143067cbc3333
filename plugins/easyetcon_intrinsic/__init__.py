"""easyetcon built-in plugin: intrinsic."""
