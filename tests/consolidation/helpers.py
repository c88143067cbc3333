"""A reward with spread across a group, for GRPO tests on random models (which never earn the
edit rewards)."""

from easyetcon.hookspecs import hookimpl


class LetterReward:
    """Registers ``letter-e``: the share of the letter e in a completion."""

    @hookimpl
    def easyetcon_register_rewards(self, register):
        register("letter-e", lambda completions, requests: [c.count("e") / (1 + len(c)) for c in completions],
                 summary="Share of the letter e.")
