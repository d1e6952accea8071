"""Build of pycompress and its native extension pycompress._C.

The CPU sources are always built (-O3 -fopenmp; SIMD paths use function target attributes and are
chosen at run time). The CUDA sources are added only when the installed torch was built with CUDA
(torch.version.cuda) and a CUDA toolkit is found; whether a GPU is present does not matter.
Build with `pip install -e . --no-build-isolation` so that torch comes from the environment.
"""

import glob
import os

import torch
from setuptools import setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _sources(pattern):
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


def _extension():
    sources = ["csrc/ops.cpp", "csrc/bindings.cpp"] + _sources("csrc/cpu/*.cpp")
    include_dirs = [os.path.join(ROOT, "csrc", "include")]
    cxx_flags = ["-O3", "-fopenmp"]
    with_cuda = torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None
    define_macros = [("PYCOMPRESS_WITH_CUDA", "1" if with_cuda else "0")]
    if not with_cuda:
        return cpp_extension.CppExtension(
            "pycompress._C",
            sources,
            include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
    sources += _sources("csrc/cuda/*.cu") + _sources("csrc/cuda/*.cpp")
    return cpp_extension.CUDAExtension(
        "pycompress._C",
        sources,
        include_dirs=include_dirs,
        define_macros=define_macros,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
        extra_link_args=["-fopenmp"],
    )


setup(
    packages=[
        "pycompress",
        "pycompress.ops",
        "pycompress.formats",
        "pycompress.nn",
        "pycompress.quant",
        "pycompress.prune",
        "pycompress.lowrank",
        "pycompress.share",
        "pycompress.distill",
        "pycompress.recipe",
        "pycompress.search",
        "pycompress.data",
        "pycompress.kernels",
    ],
    package_dir={"pycompress.kernels": "kernels"},
    package_data={"pycompress.data": ["*.txt"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
)
