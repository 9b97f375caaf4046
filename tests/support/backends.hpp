#pragma once
// The backends every backend-generic test body runs on. The Thrust backend joins when the test
// is built against flatmin::thrust (FLATMIN_TEST_WITH_THRUST).
#include <flatmin/backend/eigen.hpp>
#if defined(FLATMIN_TEST_WITH_THRUST)
#include <flatmin/backend/thrust.hpp>
#define FLATMIN_TEST_BACKENDS flatmin::backend::eigen, flatmin::backend::thrust
#else
#define FLATMIN_TEST_BACKENDS flatmin::backend::eigen
#endif
