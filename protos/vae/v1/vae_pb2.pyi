from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOAT32: _ClassVar[DataType]
    UINT8: _ClassVar[DataType]
FLOAT32: DataType
UINT8: DataType

class Tensor(_message.Message):
    __slots__ = ("shape", "data", "dtype")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    dtype: DataType
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ..., dtype: _Optional[_Union[DataType, str]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("num_samples", "seed", "temperature", "image_dtype", "model_version")
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    num_samples: int
    seed: int
    temperature: float
    image_dtype: DataType
    model_version: int
    def __init__(self, num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., image_dtype: _Optional[_Union[DataType, str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("images", "latents", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("images", "seed", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    seed: int
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("mean", "log_variance", "latents", "model_version")
    MEAN_FIELD_NUMBER: _ClassVar[int]
    LOG_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    mean: Tensor
    log_variance: Tensor
    latents: Tensor
    model_version: int
    def __init__(self, mean: _Optional[_Union[Tensor, _Mapping]] = ..., log_variance: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("latents", "image_dtype", "model_version")
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    latents: Tensor
    image_dtype: DataType
    model_version: int
    def __init__(self, latents: _Optional[_Union[Tensor, _Mapping]] = ..., image_dtype: _Optional[_Union[DataType, str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("images", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("images", "seed", "image_dtype", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    seed: int
    image_dtype: DataType
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., seed: _Optional[int] = ..., image_dtype: _Optional[_Union[DataType, str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("images", "latents", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("images", "num_importance_samples", "seed", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    NUM_IMPORTANCE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    num_importance_samples: int
    seed: int
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., num_importance_samples: _Optional[int] = ..., seed: _Optional[int] = ..., model_version: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("elbo", "log_likelihood", "reconstruction", "kl", "model_version")
    ELBO_FIELD_NUMBER: _ClassVar[int]
    LOG_LIKELIHOOD_FIELD_NUMBER: _ClassVar[int]
    RECONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    KL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    elbo: Tensor
    log_likelihood: Tensor
    reconstruction: Tensor
    kl: Tensor
    model_version: int
    def __init__(self, elbo: _Optional[_Union[Tensor, _Mapping]] = ..., log_likelihood: _Optional[_Union[Tensor, _Mapping]] = ..., reconstruction: _Optional[_Union[Tensor, _Mapping]] = ..., kl: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class InterpolateRequest(_message.Message):
    __slots__ = ("images", "latents", "steps", "spherical", "image_dtype", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SPHERICAL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    steps: int
    spherical: bool
    image_dtype: DataType
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., steps: _Optional[int] = ..., spherical: _Optional[bool] = ..., image_dtype: _Optional[_Union[DataType, str]] = ..., model_version: _Optional[int] = ...) -> None: ...

class InterpolateResponse(_message.Message):
    __slots__ = ("images", "latents", "model_version")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    images: Tensor
    latents: Tensor
    model_version: int
    def __init__(self, images: _Optional[_Union[Tensor, _Mapping]] = ..., latents: _Optional[_Union[Tensor, _Mapping]] = ..., model_version: _Optional[int] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: int
    def __init__(self, model_version: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "latent_dim", "image_shape", "likelihood", "execution_provider", "metadata", "max_batch_size", "max_num_samples", "variant", "max_importance_samples", "max_interpolation_steps", "can_score", "served_versions")
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
    MAX_IMPORTANCE_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_INTERPOLATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    CAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
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
    max_importance_samples: int
    max_interpolation_steps: int
    can_score: bool
    served_versions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., latent_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., likelihood: _Optional[str] = ..., execution_provider: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., max_batch_size: _Optional[int] = ..., max_num_samples: _Optional[int] = ..., variant: _Optional[str] = ..., max_importance_samples: _Optional[int] = ..., max_interpolation_steps: _Optional[int] = ..., can_score: _Optional[bool] = ..., served_versions: _Optional[_Iterable[int]] = ...) -> None: ...
