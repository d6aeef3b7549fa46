# Finds the onnxruntime C/C++ API headers and sets LMUL_ORT_INCLUDE_DIR.
#
# Order: ORT_INCLUDE_DIR (CMake variable or environment variable: e.g. the include/
# folder of an onnxruntime release tarball), the system include paths, then a private
# download of Debian's libonnxruntime-dev (headers only) by fetch_ort_headers.sh. The
# onnxruntime wheels on PyPI ship no headers, hence the last step. The headers only fix
# the API version the library is built for (ORT_API_VERSION); it runs on any newer
# onnxruntime.

set(_lmul_header onnxruntime_cxx_api.h)

if(NOT DEFINED ORT_INCLUDE_DIR AND DEFINED ENV{ORT_INCLUDE_DIR})
  set(ORT_INCLUDE_DIR "$ENV{ORT_INCLUDE_DIR}")
endif()

if(DEFINED ORT_INCLUDE_DIR AND NOT ORT_INCLUDE_DIR STREQUAL "")
  find_path(LMUL_ORT_INCLUDE_DIR ${_lmul_header}
    PATHS "${ORT_INCLUDE_DIR}" "${ORT_INCLUDE_DIR}/onnxruntime"
    "${ORT_INCLUDE_DIR}/onnxruntime/core/session" NO_DEFAULT_PATH)
  if(NOT LMUL_ORT_INCLUDE_DIR)
    message(FATAL_ERROR "ORT_INCLUDE_DIR=${ORT_INCLUDE_DIR} has no ${_lmul_header}: "
      "point it at the include/ folder of an onnxruntime release.")
  endif()
else()
  find_path(LMUL_ORT_INCLUDE_DIR ${_lmul_header} PATH_SUFFIXES onnxruntime onnxruntime/core/session)
  if(NOT LMUL_ORT_INCLUDE_DIR)
    set(_lmul_dest "${CMAKE_BINARY_DIR}/onnxruntime-headers")
    message(STATUS "onnxruntime headers not found; fetching Debian's libonnxruntime-dev into ${_lmul_dest}")
    execute_process(
      COMMAND bash "${CMAKE_CURRENT_LIST_DIR}/fetch_ort_headers.sh" "${_lmul_dest}"
      RESULT_VARIABLE _lmul_fetch_result
      OUTPUT_VARIABLE _lmul_fetch_output ERROR_VARIABLE _lmul_fetch_output)
    unset(LMUL_ORT_INCLUDE_DIR CACHE)
    find_path(LMUL_ORT_INCLUDE_DIR ${_lmul_header}
      PATHS "${_lmul_dest}/usr/include/onnxruntime" NO_DEFAULT_PATH)
    if(NOT _lmul_fetch_result EQUAL 0 OR NOT LMUL_ORT_INCLUDE_DIR)
      message(FATAL_ERROR "Could not find the onnxruntime C/C++ headers (${_lmul_header}).\n"
        "The automatic download of Debian's libonnxruntime-dev failed:\n${_lmul_fetch_output}\n"
        "Set ORT_INCLUDE_DIR to the include/ folder of an onnxruntime release "
        "(e.g. ORT_INCLUDE_DIR=/opt/onnxruntime/include pip install .).")
    endif()
  endif()
endif()

file(STRINGS "${LMUL_ORT_INCLUDE_DIR}/onnxruntime_c_api.h" _lmul_api_line REGEX "^#define ORT_API_VERSION [0-9]+")
message(STATUS "onnxruntime headers: ${LMUL_ORT_INCLUDE_DIR} (${_lmul_api_line})")
