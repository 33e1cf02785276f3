"""Every fused CUDA kernel compiles with NVRTC, for sm_80 and sm_90, in float32 and float64.

NVRTC needs no GPU: the NVRTC library (the nvidia-cuda-nvrtc wheel that CuPy's [ctk] extra
installs) compiles on any Linux machine, so this runs in CPU-only CI and catches a kernel that
would fail at its first call on a GPU.

What is compiled, and how:
* the row kernels (softmax, layer norm): ``row_kernel_source(dtype)`` as it is, the way
  ``cupy.RawKernel`` compiles it (no CuPy headers in front);
* the elementwise kernels (GELU exact/tanh forward/backward, AdamW with and without
  amsgrad): the CUDA C that ``cupy.ElementwiseKernel`` generates, rebuilt here after CuPy's
  ``_get_elementwise_kernel_code`` (cupy/_core/_kernel.pyx): CuPy's headers, ``typedef float T;``,
  the kernel's parameters as CuPy declares them (``const CArray<float, 1, 1, 1> _raw_x`` for an
  input array, ``float decay`` for a scalar, ``CIndexer<1, 1> _ind``), and the operation inside
  CuPy's grid-stride loop after ``const T &x = _raw_x[_ind.get()];`` for each array. The
  parameter strings, operations, names and options are those fused_cuda.py passes to
  backend.cuda_elementwise_kernel, caught on their way there; which arguments are arrays and
  which are scalars comes from calling fused_cuda's own wrappers. Two layouts are built: the
  contiguous one (CuPy folds a contiguous array to one dimension with 32-bit indices) and a
  strided 3-D one with 64-bit indices.
* options: fused_cuda's (``--fmad=false``) plus what CuPy adds (its include directories and
  C++ standard, ``-ftz=true``, ``--device-as-default-execution-space``) and ``-arch=sm_XX``,
  so NVRTC emits a cubin (ptxas runs too), as CuPy does for a GPU it knows.

What this proves: the sources are valid CUDA C for these architectures and dtypes, every
kernel name the launchers ask for is in the module, and ptxas accepts the result. What it
does not: that the kernels compute the right numbers (tests/test_fused_cuda.py on a GPU,
and tests/test_fused_cuda_emulation.py on the CPU), that they run on a GPU, or that the
elementwise source is byte for byte CuPy's (it follows CuPy 14's generator; a future CuPy
may generate other code).
"""
import re

import numpy as np
import pytest

from minivit import backend
from minivit.functional import fused_cuda

ARCHS = ("80", "90")
DTYPES = tuple(np.dtype(c) for c in fused_cuda._CTYPES)     # every dtype the code instantiates
CUPY_HEADERS = ("cupy/complex.cuh", "cupy/carray.cuh", "cupy/atomics.cuh", "cupy/math_constants.h")


def _nvrtc_or_skip():
    """CuPy's NVRTC binding, once NVRTC has loaded; no GPU is needed."""
    if backend.is_strict_standin():
        pytest.skip("cupy is the strict stand-in in this process: test_compiles_with_the_real_cupy runs "
                    "these tests in a process of their own")
    try:
        import cupy._core.core  # noqa: F401
        from cupy.cuda import nvrtc
    except Exception as e:
        pytest.skip(f"no NVRTC: CuPy does not import ({type(e).__name__}: {e})")
    try:
        nvrtc.getVersion()
    except Exception as e:
        pytest.skip(f"no NVRTC library found ({type(e).__name__}: {e}); "
                    f"pip install nvidia-cuda-nvrtc-cu12 (or minivit[cuda12])")
    return nvrtc


@pytest.fixture(scope="module")
def nvrtc():
    return _nvrtc_or_skip()


def _cupy_options(options):
    """The NVRTC options CuPy (14) compiles a kernel with, less the architecture."""
    import cupy._core.core as core
    try:
        options = tuple(core.assemble_cupy_compiler_options(tuple(options)))
    except Exception:   # no CUDA headers found: our kernels include none, so CuPy's own suffice
        options = tuple(options) + ("--std=c++17", "-I" + core._get_header_dir_path())
    return options + ("-ftz=true", "--device-as-default-execution-space")


def compile_cubin(nvrtc, source, what, arch, dtype, options=()):
    """Compile ``source`` to a cubin for sm_``arch``; on failure, an AssertionError that names
    the kernel, the architecture, the dtype and NVRTC's log."""
    opts = _cupy_options(options) + (f"-arch=sm_{arch}",)
    prog = nvrtc.createProgram(source, re.sub(r"\W+", "_", what).strip("_")[:60] + ".cu", (), ())
    try:
        try:
            nvrtc.compileProgram(prog, opts)
        except nvrtc.NVRTCError as e:
            log = nvrtc.getProgramLog(prog)
            raise AssertionError(f"NVRTC {nvrtc.getVersion()} failed to compile {what} for sm_{arch} "
                                 f"in {dtype}: {e}\n{log}") from None
        return nvrtc.getCUBIN(prog)
    finally:
        nvrtc.destroyProgram(prog)


def kernel_names(source):
    return re.findall(r'extern\s+"C"\s+__global__\s+void\s+(\w+)', source)


# --------------------------------------------------------------------------- row kernels
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_row_kernels_compile(nvrtc, arch, dtype):
    source = fused_cuda.row_kernel_source(dtype)
    names = kernel_names(source)
    cubin = compile_cubin(nvrtc, source, f"row kernels ({', '.join(names)})", arch, dtype,
                          fused_cuda._OPTIONS)
    launched = set(re.findall(r'_row_kernel\("(\w+)"', open(fused_cuda.__file__).read()))
    assert launched and launched <= set(names), f"launched {launched}, defined {names}"
    for name in names:      # extern "C" names stay unmangled in the cubin's symbol table
        assert name.encode() in cubin, f"{name} is missing from the sm_{arch} {dtype} cubin"


# --------------------------------------------------------------------------- elementwise kernels
def _elementwise_kernels(monkeypatch):
    """[(name, in_params, out_params, operation, options, arg_is_array)] for every
    ElementwiseKernel fused_cuda makes, caught from its calls through the backend."""
    made = []

    class Recorder:
        def __init__(self, in_params, out_params, operation, name, preamble="", options=()):
            self.spec = dict(name=name, in_params=in_params, out_params=out_params,
                             operation=operation, preamble=preamble, options=tuple(options))

        def __call__(self, *args):
            made.append(dict(self.spec, arg_is_array=[isinstance(a, np.ndarray) for a in args],
                             arg_ndim=[getattr(a, "ndim", 0) for a in args],
                             arg_dtype=[np.dtype(a.dtype).name if hasattr(a, "dtype") else None for a in args]))

    monkeypatch.setattr(backend, "cuda_elementwise_kernel", Recorder)
    monkeypatch.setattr(fused_cuda, "_gelu_kernel", fused_cuda._gelu_kernel.__wrapped__)
    monkeypatch.setattr(fused_cuda, "_adamw_kernel", fused_cuda._adamw_kernel.__wrapped__)
    x = np.ones(4, np.float32)
    parts = np.ones((3, 4), np.float32)
    fused_cuda._chunk_sums_kernel.__wrapped__()(parts, parts, np.int64(3), x, x)   # layer norm's ∂w, ∂b
    monkeypatch.setattr(fused_cuda, "_keep_mask_kernel", fused_cuda._keep_mask_kernel.__wrapped__)
    fused_cuda.keep_mask(x, 0.9, 1 / 0.9, np.float32)                                # dropout's mask
    monkeypatch.setattr(fused_cuda, "_col2im_kernel", fused_cuda._col2im_kernel.__wrapped__)
    fused_cuda.col2im(np.ones((1, 2, 3, 3, 2, 2, 2), np.float32), (2, 2, 4, 4), (2, 2), (2, 2), (1, 1), (1, 1))
    monkeypatch.setattr(fused_cuda, "_class_nll_kernel", fused_cuda._class_nll_kernel.__wrapped__)
    labels = np.zeros(3, np.int64)
    fused_cuda.class_nll_forward(parts, labels, x, 0.1, -100)                       # cross-entropy
    fused_cuda.class_nll_backward(np.ones((), np.float32), parts, labels, x, labels.astype(np.float32),
                                  np.ones((), np.float32), 0.1, -100, True)
    for approximate in ("none", "tanh"):
        fused_cuda.gelu_forward(x, approximate)
        fused_cuda.gelu_backward(x, x, approximate)
    for amsgrad in (False, True):
        bufs = [np.ones(4, np.float32) for _ in range(4)]
        fused_cuda.adamw_step(bufs[0], x, bufs[1], bufs[2], bufs[3] if amsgrad else None, step=1,
                              lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.05)
    return made


# CuPy's C names of the dtypes an ElementwiseKernel's parameters may name (cupy/_core/_scalar.pyx).
NAMED_TYPES = {"int64": "long long", "int32": "int", "float32": "float", "float64": "double", "bool": "bool"}


def elementwise_source(spec, ctype, ndim=1, contiguous=True, index_32=True):
    """The CUDA C cupy.ElementwiseKernel generates for ``spec`` with every T = ``ctype``."""
    ins = [p.split() for p in spec["in_params"].split(",")]
    outs = [p.split() for p in spec["out_params"].split(",")]
    assert all(len(p) == 2 or (len(p) == 3 and p[0] == "raw") for p in ins + outs), \
        "only 'type name' and 'raw type name' parameters are handled here"
    is_array = spec["arg_is_array"]
    assert len(is_array) in (len(ins), len(ins) + len(outs)), "called with the inputs, or inputs and outputs"
    is_array = is_array[:len(ins)] + [True] * len(outs)        # outputs CuPy makes are arrays too
    params, refs = [], []
    for p, is_array, is_in, arg_ndim in zip(ins + outs, is_array, [True] * len(ins) + [False] * len(outs),
                                            spec["arg_ndim"] + [ndim] * len(outs)):
        raw, (typ, name) = p[0] == "raw", p[-2:]
        c = ctype if typ == "T" else NAMED_TYPES.get(typ, typ)
        const = "const " if is_in else ""
        if raw:                                                # the whole array, indexed by the operation
            params.append(f"{const}CArray<{c}, {arg_ndim}, 1, {int(index_32)}> {name}")
        elif is_array:
            params.append(f"{const}CArray<{c}, {ndim}, {int(contiguous)}, {int(index_32)}> _raw_{name}")
            ref_type = typ if len(typ) == 1 and typ.isupper() else c     # a placeholder, or the C name of a dtype
            refs.append(f"{const}{ref_type} &{name} = _raw_{name}[_ind.get()];")
        else:
            params.append(f"{const}{c} {name}")
    params.append(f"CIndexer<{ndim}, {int(index_32)}> _ind")
    headers = "".join(f"#include <{h}>\n" for h in CUPY_HEADERS)
    # type placeholders other than T (``I t``): CuPy typedefs each to its argument's dtype
    others = {p[-2]: NAMED_TYPES[dt] for p, dt in zip(ins, spec["arg_dtype"])
              if len(p[-2]) == 1 and p[-2].isupper() and p[-2] != "T"}
    headers += "".join(f"typedef {c} {name};\n" for name, c in others.items())
    body = "\n".join(refs + [spec["operation"]])
    return (f"{headers}typedef {ctype} T;\n{spec['preamble']}\n"
            f'extern "C" __global__ void {spec["name"]}({", ".join(params)}) {{\n'
            f"  ;\n  #pragma unroll 1\n  CUPY_FOR(i, _ind.size()) {{\n    _ind.set(i);\n"
            f"    {body};\n  }}\n  ;\n}}\n")


def test_every_elementwise_kernel_is_caught(monkeypatch):
    names = [k["name"] for k in _elementwise_kernels(monkeypatch)]
    assert sorted(names) == sorted(["minivit_gelu_none", "minivit_gelu_none_backward", "minivit_gelu_tanh",
                                    "minivit_gelu_tanh_backward", "minivit_adamw", "minivit_adamw_amsgrad",
                                    "minivit_chunk_sums", "minivit_keep_mask", "minivit_col2im", "minivit_class_nll",
                                    "minivit_class_nll_backward"])


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "strided"])
def test_elementwise_kernels_compile(nvrtc, monkeypatch, arch, dtype, layout):
    ctype = fused_cuda._CTYPES[dtype.char]
    shape = dict(ndim=1, contiguous=True, index_32=True) if layout == "contiguous" else \
        dict(ndim=3, contiguous=False, index_32=False)
    for spec in _elementwise_kernels(monkeypatch):
        assert "--fmad=false" in spec["options"]
        cubin = compile_cubin(nvrtc, elementwise_source(spec, ctype, **shape),
                              f"{spec['name']} ({layout})", arch, dtype, spec["options"])
        assert spec["name"].encode() in cubin


# --------------------------------------------------------------------------- the check can fail
def test_a_broken_kernel_fails_with_its_name_arch_dtype_and_log(nvrtc):
    source = fused_cuda.row_kernel_source(np.float32).replace("fmax(m, SCORE(j))", "fmax(m, SCORE(j), 1, 2)")
    assert "fmax(m, SCORE(j), 1, 2)" in source
    with pytest.raises(AssertionError, match=r"(?s)row kernels \(softmax_forward.*sm_90 in float32.*fmax"):
        compile_cubin(nvrtc, source, "row kernels (softmax_forward, ...)", "90", np.dtype(np.float32))


def test_a_broken_elementwise_operation_fails(nvrtc, monkeypatch):
    spec = next(k for k in _elementwise_kernels(monkeypatch) if k["name"] == "minivit_adamw")
    spec = dict(spec, operation=spec["operation"].replace("T denom", "U denom"))
    with pytest.raises(AssertionError, match=r"(?s)minivit_adamw.*sm_80 in float64.*U"):
        compile_cubin(nvrtc, elementwise_source(spec, "double"), "minivit_adamw", "80",
                      np.dtype(np.float64), spec["options"])


def test_compiles_with_the_real_cupy():
    """Where the suite runs on the strict stand-in (no GPU), the tests above need the real CuPy's
    NVRTC binding, which the stand-in replaces in this process: run them in one of their own."""
    if not backend.is_strict_standin():
        pytest.skip("the tests above ran in this process")
    import os
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                        __file__, "-k", "not test_compiles_with_the_real_cupy"],
                       capture_output=True, text=True, timeout=600, env={**os.environ, "MINIVIT_STRICT_CUPY": "0"})
    summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-2000:]
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
