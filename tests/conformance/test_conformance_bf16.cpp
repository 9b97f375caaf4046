// The 16-bit conformance checks (conformance16.hpp) with flatmin::bfloat16 weights and gradients: every
// composition of compositions.hpp on every backend (test_conformance_fp16.cpp has the other type).
#include "conformance/conformance16.hpp"

using conformance16_cases =
    cross3<fc::compositions, std::tuple<FLATMIN_TEST_BACKENDS>, std::tuple<flatmin::bfloat16>>::type;
TEST_CASE_TEMPLATE_APPLY(conformance16_restores, conformance16_cases);
TEST_CASE_TEMPLATE_APPLY(conformance16_nonfinite, conformance16_cases);
