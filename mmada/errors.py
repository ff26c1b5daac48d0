"""User-facing errors.

Anything a user can cause with bad input (a config field, a data record, a CLI flag) raises a
subclass of :class:`MMaDAError` whose message names the offending field or value. The CLI turns
these into a one-line ``error: ...`` message and exit status 2 instead of a traceback.
"""


class MMaDAError(ValueError):
    """Base class for errors caused by user input (configs, data, arguments)."""


class ConfigError(MMaDAError):
    """A configuration field has a wrong or inconsistent value."""


class VocabError(MMaDAError):
    """The tokenizer, the special-token ids and the checkpoint vocabulary disagree."""


class SamplerError(MMaDAError):
    """Sampler arguments are inconsistent (e.g. gen_length not divisible by block_length)."""
