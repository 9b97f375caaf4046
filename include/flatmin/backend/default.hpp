#pragma once
/// @file default.hpp
/// `flatmin::default_backend`: the backend the named compositions use when none is given.
///
/// It follows the compiler: `backend::thrust` under a CUDA compiler (`__CUDACC__`), else
/// `backend::eigen`. Define `FLATMIN_DEFAULT_BACKEND` to `eigen` or `thrust` to choose.

#define FLATMIN_BACKEND_ID_eigen 1
#define FLATMIN_BACKEND_ID_thrust 2
#define FLATMIN_BACKEND_ID_(x) FLATMIN_BACKEND_ID_##x
#define FLATMIN_BACKEND_ID(x) FLATMIN_BACKEND_ID_(x)

#if defined(FLATMIN_DEFAULT_BACKEND)
#if FLATMIN_BACKEND_ID(FLATMIN_DEFAULT_BACKEND) == 2
#define FLATMIN_DEFAULT_IS_THRUST 1
#elif FLATMIN_BACKEND_ID(FLATMIN_DEFAULT_BACKEND) != 1
#error "FLATMIN_DEFAULT_BACKEND must be eigen or thrust"
#endif
#elif defined(__CUDACC__)
#define FLATMIN_DEFAULT_IS_THRUST 1
#endif

#if defined(FLATMIN_DEFAULT_IS_THRUST)
#include "thrust.hpp"
namespace flatmin {
using default_backend = backend::thrust;
}
#else
#include "eigen.hpp"
namespace flatmin {
using default_backend = backend::eigen;
}
#endif
