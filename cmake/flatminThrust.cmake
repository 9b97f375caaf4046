# flatmin::thrust — backend::thrust over a Thrust device system.
#
#   FLATMIN_ENABLE_CUDA=ON        THRUST_DEVICE_SYSTEM=CUDA, compiled by nvcc with the Thrust (CCCL)
#                                 that ships with the CUDA toolkit. CMAKE_CUDA_ARCHITECTURES
#                                 defaults to 90 (H100/H200).
#   otherwise                     THRUST_DEVICE_SYSTEM=${FLATMIN_THRUST_DEVICE_SYSTEM} (OMP or CPP)
#                                 with a host compiler and the system's Thrust (Debian: libthrust-dev).
#
# Debian's Thrust 1.17 and the toolkit's CCCL must never meet in one translation unit: in a CUDA
# build the target adds no Thrust include directory (nvcc finds its own), and host-compiled tests
# of that build do not link flatmin::thrust.
# Included from the top-level CMakeLists.txt; appends to FLATMIN_EXPORT_TARGETS and writes the
# flatminThrustDeps.cmake that the installed package config includes.

add_library(flatmin_thrust INTERFACE)
add_library(flatmin::thrust ALIAS flatmin_thrust)
set_target_properties(flatmin_thrust PROPERTIES EXPORT_NAME thrust)
target_link_libraries(flatmin_thrust INTERFACE flatmin::flatmin)

if(FLATMIN_ENABLE_CUDA)
  if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
    set(CMAKE_CUDA_ARCHITECTURES 90 CACHE STRING "CUDA architectures for the flatmin CUDA tests and benchmarks")
  endif()
  enable_language(CUDA)
  find_package(CUDAToolkit REQUIRED)
  set(FLATMIN_THRUST_SYSTEM CUDA)
  target_compile_definitions(flatmin_thrust INTERFACE THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_CUDA)
  # Device lambdas for backend::for_each_index users; C++20 for the policies' concepts.
  target_compile_options(flatmin_thrust INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:--extended-lambda>)
  if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
    target_compile_features(flatmin_thrust INTERFACE cuda_std_20)
  else()  # CMake older than the toolkit (3.25 does not know CUDA 13's C++20 support)
    target_compile_options(flatmin_thrust INTERFACE $<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>)
  endif()
  target_link_libraries(flatmin_thrust INTERFACE CUDA::cudart)
  set(FLATMIN_THRUST_DEPS_CONTENT [=[
include(CMakeFindDependencyMacro)
find_dependency(CUDAToolkit)
]=])
else()
  string(TOUPPER "${FLATMIN_THRUST_DEVICE_SYSTEM}" FLATMIN_THRUST_SYSTEM)
  if(NOT FLATMIN_THRUST_SYSTEM MATCHES "^(OMP|CPP)$")
    message(FATAL_ERROR "flatmin: FLATMIN_THRUST_DEVICE_SYSTEM must be OMP or CPP (CUDA: FLATMIN_ENABLE_CUDA=ON), "
                        "got '${FLATMIN_THRUST_DEVICE_SYSTEM}'")
  endif()
  find_path(FLATMIN_THRUST_INCLUDE_DIR thrust/version.h PATHS /usr/include /usr/local/include
            DOC "Directory holding thrust/version.h (Debian: libthrust-dev)")
  if(NOT FLATMIN_THRUST_INCLUDE_DIR)
    message(FATAL_ERROR "flatmin: Thrust headers not found (install libthrust-dev, set FLATMIN_THRUST_INCLUDE_DIR, "
                        "or configure with -DFLATMIN_ENABLE_THRUST=OFF)")
  endif()
  # A system include directory is implicit: adding it would only reorder the search path.
  if(NOT FLATMIN_THRUST_INCLUDE_DIR IN_LIST CMAKE_CXX_IMPLICIT_INCLUDE_DIRECTORIES)
    target_include_directories(flatmin_thrust SYSTEM INTERFACE $<BUILD_INTERFACE:${FLATMIN_THRUST_INCLUDE_DIR}>)
  endif()
  target_compile_definitions(flatmin_thrust INTERFACE THRUST_DEVICE_SYSTEM=THRUST_DEVICE_SYSTEM_${FLATMIN_THRUST_SYSTEM})
  if(FLATMIN_THRUST_SYSTEM STREQUAL "OMP")
    find_package(OpenMP REQUIRED COMPONENTS CXX)
    target_link_libraries(flatmin_thrust INTERFACE OpenMP::OpenMP_CXX)
    set(FLATMIN_THRUST_DEPS_CONTENT [=[
include(CMakeFindDependencyMacro)
find_dependency(OpenMP COMPONENTS CXX)
find_path(FLATMIN_THRUST_INCLUDE_DIR thrust/version.h PATHS /usr/include /usr/local/include)
if(NOT FLATMIN_THRUST_INCLUDE_DIR)
  set(flatmin_FOUND FALSE)
  set(flatmin_NOT_FOUND_MESSAGE "flatmin::thrust needs the Thrust headers (libthrust-dev)")
endif()
]=])
  else()
    set(FLATMIN_THRUST_DEPS_CONTENT [=[
find_path(FLATMIN_THRUST_INCLUDE_DIR thrust/version.h PATHS /usr/include /usr/local/include)
if(NOT FLATMIN_THRUST_INCLUDE_DIR)
  set(flatmin_FOUND FALSE)
  set(flatmin_NOT_FOUND_MESSAGE "flatmin::thrust needs the Thrust headers (libthrust-dev)")
endif()
]=])
  endif()
endif()
message(STATUS "flatmin: flatmin::thrust on THRUST_DEVICE_SYSTEM_${FLATMIN_THRUST_SYSTEM}")

list(APPEND FLATMIN_EXPORT_TARGETS flatmin_thrust)
set(FLATMIN_THRUST_EXPORTED ON)
file(WRITE ${PROJECT_BINARY_DIR}/flatminThrustDeps.cmake
     "# Re-finds what flatmin::thrust needs (THRUST_DEVICE_SYSTEM_${FLATMIN_THRUST_SYSTEM}).\n"
     "${FLATMIN_THRUST_DEPS_CONTENT}")
install(FILES ${PROJECT_BINARY_DIR}/flatminThrustDeps.cmake DESTINATION ${CMAKE_INSTALL_DATADIR}/cmake/flatmin)
