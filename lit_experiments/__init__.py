"""lit_experiments: vision studies as LightningModule + LightningDataModule pairs, run from LightningCLI YAML."""
import logging as _logging


class _ThirdPartyNoise(_logging.Filter):
    """Drops deprecation notices that libraries print on import and a user cannot act on (torchao, imported by
    transformers, registers Enum constants that torch now warns about on every distill / multilabel command)."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return "register_constant() on Enum subclasses is deprecated" not in record.getMessage()


_logging.getLogger("torch.utils._pytree").addFilter(_ThirdPartyNoise())
