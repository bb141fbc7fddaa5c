# The optional NVIDIA parts of _core, included from CMakeLists.txt after the _core target exists:
#   DEXRT_WITH_CUDA      the CUDA pre/post kernels and runtime wrappers (needs nvcc, the CUDA toolkit)
#   DEXRT_WITH_TENSORRT  the TensorRT backend (needs CUDA and a TensorRT SDK: hint TensorRT_ROOT)
# Each is AUTO (built when found, a STATUS line saying what was skipped when not), ON (required: a missing
# dependency stops the configure) or OFF. The CPU path never depends on either.

set(DEXRT_WITH_CUDA AUTO CACHE STRING "Build the CUDA kernels: AUTO (when nvcc is found), ON or OFF")
set_property(CACHE DEXRT_WITH_CUDA PROPERTY STRINGS AUTO ON OFF)
set(DEXRT_WITH_TENSORRT AUTO CACHE STRING "Build the TensorRT backend: AUTO (when the SDK is found), ON or OFF")
set_property(CACHE DEXRT_WITH_TENSORRT PROPERTY STRINGS AUTO ON OFF)
set(TensorRT_ROOT "$ENV{TensorRT_ROOT}" CACHE PATH "TensorRT SDK folder (holding include/NvInfer.h and lib/)")

foreach(_opt DEXRT_WITH_CUDA DEXRT_WITH_TENSORRT)
  string(TOUPPER "${${_opt}}" ${_opt})
  if(NOT ${_opt} MATCHES "^(AUTO|ON|OFF)$")
    message(FATAL_ERROR "dexrt: ${_opt} must be AUTO, ON or OFF, got '${${_opt}}'")
  endif()
endforeach()

# ---- CUDA ----------------------------------------------------------------------------------------------------
set(DEXRT_CUDA_FOUND FALSE)
if(DEXRT_WITH_CUDA STREQUAL "OFF")
  message(STATUS "dexrt: CUDA kernels: skipped (DEXRT_WITH_CUDA=OFF)")
else()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Turing to Blackwell as native code (CUDA 13 dropped everything before 7.5), plus PTX of the newest
      # so that later GPUs JIT-compile the kernels at first use.
      set(CMAKE_CUDA_ARCHITECTURES 75-real 80-real 86-real 89-real 90-real 100-real 120-real 120-virtual)
    endif()
    # Static runtime: _core then imports on machines without an NVIDIA driver (libcudart_static opens
    # libcuda.so only at the first CUDA call, and reports a missing driver as an error code).
    set(CMAKE_CUDA_RUNTIME_LIBRARY Static)
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(DEXRT_CUDA_FOUND TRUE)
    message(STATUS "dexrt: CUDA kernels: built with CUDA ${CUDAToolkit_VERSION} (${CMAKE_CUDA_COMPILER}), "
                   "architectures ${CMAKE_CUDA_ARCHITECTURES}")
  elseif(DEXRT_WITH_CUDA STREQUAL "ON")
    message(FATAL_ERROR "dexrt: DEXRT_WITH_CUDA=ON but no CUDA compiler was found: install the CUDA toolkit and "
                        "put nvcc on PATH, or set CMAKE_CUDA_COMPILER")
  else()
    message(STATUS "dexrt: CUDA kernels: skipped (no nvcc found; install the CUDA toolkit to build them)")
  endif()
endif()

if(DEXRT_CUDA_FOUND)
  add_library(dexrt_cuda STATIC cpp/src/cuda/prepost.cu cpp/src/cuda/runtime.cpp)
  set_target_properties(dexrt_cuda PROPERTIES
    CUDA_STANDARD 17 CUDA_STANDARD_REQUIRED ON
    POSITION_INDEPENDENT_CODE ON  # linked into the _core shared module
    CXX_VISIBILITY_PRESET hidden CUDA_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  target_include_directories(dexrt_cuda PUBLIC cpp/include)
  target_link_libraries(dexrt_cuda PUBLIC CUDA::cudart_static)
  target_compile_options(dexrt_cuda PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic $<$<BOOL:${DEXRT_WERROR}>:-Werror>>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra $<$<BOOL:${DEXRT_WERROR}>:-Werror=all-warnings>>)
  target_link_libraries(_core PRIVATE dexrt_cuda)
  target_compile_definitions(_core PRIVATE DEXRT_WITH_CUDA=1)
endif()

# ---- TensorRT ------------------------------------------------------------------------------------------------
set(DEXRT_TENSORRT_FOUND FALSE)
if(DEXRT_WITH_TENSORRT STREQUAL "OFF")
  message(STATUS "dexrt: TensorRT backend: skipped (DEXRT_WITH_TENSORRT=OFF)")
elseif(NOT DEXRT_CUDA_FOUND)
  if(DEXRT_WITH_TENSORRT STREQUAL "ON")
    message(FATAL_ERROR "dexrt: DEXRT_WITH_TENSORRT=ON needs CUDA, which was not built (see DEXRT_WITH_CUDA above)")
  endif()
  message(STATUS "dexrt: TensorRT backend: skipped (needs CUDA)")
else()
  find_path(TensorRT_INCLUDE_DIR NvInfer.h HINTS "${TensorRT_ROOT}" PATH_SUFFIXES include)
  find_library(TensorRT_LIBRARY NAMES nvinfer HINTS "${TensorRT_ROOT}" PATH_SUFFIXES lib lib64)
  if(TensorRT_INCLUDE_DIR AND TensorRT_LIBRARY)
    # NvInferVersion.h spells the major version NV_TENSORRT_MAJOR (up to 10.x) or TRT_MAJOR_ENTERPRISE.
    file(STRINGS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_defines
         REGEX "^#define (NV_TENSORRT|TRT)_(MAJOR|MINOR|PATCH)(_ENTERPRISE)? +[0-9]+")
    foreach(_part MAJOR MINOR PATCH)
      set(TensorRT_VERSION_${_part} "")
      foreach(_line IN LISTS _trt_defines)
        if(_line MATCHES "_${_part}(_ENTERPRISE)? +([0-9]+)")
          set(TensorRT_VERSION_${_part} "${CMAKE_MATCH_2}")
        endif()
      endforeach()
    endforeach()
    set(TensorRT_VERSION "${TensorRT_VERSION_MAJOR}.${TensorRT_VERSION_MINOR}.${TensorRT_VERSION_PATCH}")
    if(NOT TensorRT_VERSION_MAJOR OR TensorRT_VERSION_MAJOR LESS 10)
      message(FATAL_ERROR "dexrt: TensorRT ${TensorRT_VERSION} at ${TensorRT_INCLUDE_DIR} is too old: "
                          "the backend needs TensorRT 10 or newer")
    endif()
    add_library(dexrt::nvinfer UNKNOWN IMPORTED)  # imported: its headers are system headers (no warnings)
    set_target_properties(dexrt::nvinfer PROPERTIES
      IMPORTED_LOCATION "${TensorRT_LIBRARY}" INTERFACE_INCLUDE_DIRECTORIES "${TensorRT_INCLUDE_DIR}")
    target_sources(_core PRIVATE cpp/src/tensorrt_backend.cpp)
    target_link_libraries(_core PRIVATE dexrt::nvinfer)
    target_compile_definitions(_core PRIVATE DEXRT_WITH_TENSORRT=1)
    # libnvinfer is found beside a `tensorrt_libs` wheel, else where it was at build time.
    get_filename_component(_trt_libdir "${TensorRT_LIBRARY}" DIRECTORY)
    get_target_property(_rpath _core INSTALL_RPATH)
    set_target_properties(_core PROPERTIES INSTALL_RPATH "${_rpath};$ORIGIN/../tensorrt_libs;${_trt_libdir}")
    set(DEXRT_TENSORRT_FOUND TRUE)
    message(STATUS "dexrt: TensorRT backend: built with TensorRT ${TensorRT_VERSION} (${TensorRT_LIBRARY})")
  elseif(DEXRT_WITH_TENSORRT STREQUAL "ON")
    message(FATAL_ERROR "dexrt: DEXRT_WITH_TENSORRT=ON but no TensorRT SDK was found (NvInfer.h: "
                        "${TensorRT_INCLUDE_DIR}, libnvinfer: ${TensorRT_LIBRARY}); set TensorRT_ROOT to the "
                        "unpacked SDK folder")
  else()
    message(STATUS "dexrt: TensorRT backend: skipped (no TensorRT SDK found; set TensorRT_ROOT to build it)")
  endif()
endif()

target_sources(_core PRIVATE cpp/src/register_cuda.cpp)  # always: reports what this build has

# ---- TensorRT compile check ----------------------------------------------------------------------------------
# DEXRT_TENSORRT_HEADERS names a folder of TensorRT's public headers (no SDK library needed). The target
# dexrt_tensorrt_compile_check then compiles the TensorRT backend and its bindings against them, without linking
# (an OBJECT library outside `all`), so every change to that code meets the real API on machines without
# TensorRT or a GPU. tests/test_tensorrt_compile.py builds it against NVIDIA's TensorRT 11.1 headers.
set(DEXRT_TENSORRT_HEADERS "" CACHE PATH "TensorRT include folder for the compile-only check of the TensorRT backend")
if(DEXRT_TENSORRT_HEADERS)
  if(NOT EXISTS "${DEXRT_TENSORRT_HEADERS}/NvInfer.h")
    message(FATAL_ERROR "dexrt: DEXRT_TENSORRT_HEADERS=${DEXRT_TENSORRT_HEADERS} holds no NvInfer.h")
  endif()
  if(NOT DEXRT_CUDA_FOUND)
    message(FATAL_ERROR "dexrt: the TensorRT compile check needs the CUDA toolkit's headers (see DEXRT_WITH_CUDA)")
  endif()
  add_library(dexrt_tensorrt_compile_check OBJECT EXCLUDE_FROM_ALL
    cpp/src/tensorrt_backend.cpp cpp/src/register_cuda.cpp cpp/src/register_engine.cpp)
  target_include_directories(dexrt_tensorrt_compile_check PRIVATE cpp/include)
  target_include_directories(dexrt_tensorrt_compile_check SYSTEM PRIVATE "${DEXRT_TENSORRT_HEADERS}")
  # An OBJECT library takes only the usage requirements (headers, definitions) of what it "links".
  target_link_libraries(dexrt_tensorrt_compile_check PRIVATE pybind11::module openvino::runtime CUDA::cudart_static)
  target_compile_definitions(dexrt_tensorrt_compile_check PRIVATE
    DEXRT_WITH_CUDA=1 DEXRT_WITH_TENSORRT=1 DEXRT_VERSION="${PROJECT_VERSION}")
  target_compile_options(dexrt_tensorrt_compile_check PRIVATE -Wall -Wextra -Wpedantic
    $<$<BOOL:${DEXRT_WERROR}>:-Werror>)
  message(STATUS "dexrt: TensorRT compile check: target dexrt_tensorrt_compile_check against ${DEXRT_TENSORRT_HEADERS}")
endif()
