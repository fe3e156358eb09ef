from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("num_samples", "seed", "temperature")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    seed: int
    temperature: float
    def __init__(self, num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("images", "latents")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images", "seed")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    seed: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("mean", "log_variance", "latents")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    log_variance: Tensor
    latents: Tensor
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., log_variance: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("latents",)
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("images",)
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("images", "seed")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    seed: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("images", "latents")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "latent_dim", "image_shape", "likelihood", "execution_provider", "metadata", "max_batch_size", "max_num_samples", "variant")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    EXECUTION_PROVIDER_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    latent_dim: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    likelihood: str
    execution_provider: str
    metadata: _containers.ScalarMap[str, str]
    max_batch_size: int
    max_num_samples: int
    variant: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., latent_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., likelihood: _Optional[str] = ..., execution_provider: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., max_batch_size: _Optional[int] = ..., max_num_samples: _Optional[int] = ..., variant: _Optional[str] = ...) -> None: ...
