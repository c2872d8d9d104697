"""Satipatthana components: adapters, Vitakka, Vicara, Sati (+ SantanaLog), Vipassana and decoders."""

from .adapters import CNNAdapter, MLPAdapter
from .decoders import ConvDecoder, MLPDecoder, TaskDecoder
from .santana import SantanaLog
from .sati import DrunkConfig, PerSampleNoise, SamathaOutput, Sati
from .vicara import Vicara
from .vipassana import VipassanaOutput, VipassanaV40, VipassanaV41
from .vitakka import Vitakka, VitakkaOutput

__all__ = [
    "CNNAdapter", "ConvDecoder", "DrunkConfig", "MLPAdapter", "MLPDecoder", "PerSampleNoise", "SamathaOutput", "SantanaLog", "Sati",
    "TaskDecoder", "Vicara", "VipassanaOutput", "VipassanaV40", "VipassanaV41", "Vitakka", "VitakkaOutput",
]
