"""Satipatthana components: adapters, Vitakka, Vicara, Sati (+ SantanaLog), Vipassana, decoders and baselines."""

from .adapters import CNNAdapter, MLPAdapter
from .baselines import CNNBaseline, MLPBaseline
from .decoders import ConvDecoder, ReconMLPDecoder, TaskDecoder
from .santana import SantanaLog
from .sati import DrunkConfig, PerSampleNoise, SamathaOutput, Sati
from .vicara import Vicara
from .vipassana import VipassanaOutput, VipassanaV40, VipassanaV41
from .vitakka import Vitakka, VitakkaOutput

__all__ = [
    "CNNAdapter", "CNNBaseline", "ConvDecoder", "DrunkConfig", "MLPAdapter", "MLPBaseline", "PerSampleNoise",
    "ReconMLPDecoder", "SamathaOutput", "SantanaLog", "Sati", "TaskDecoder", "Vicara", "VipassanaOutput",
    "VipassanaV40", "VipassanaV41", "Vitakka", "VitakkaOutput",
]
