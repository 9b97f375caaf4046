// libFuzzer target for sharpness_aware::load(). Input: one byte choosing the composition
// (compositions.hpp), then the checkpoint bytes. Checked, beyond the sanitizers' memory errors:
// - a load that throws must throw std::invalid_argument and leave the state as it was (the
//   optimizer's own save() before and after are equal);
// - after a load that succeeds, three steps run (one with a non-finite g_adv), and what save()
//   then writes loads again.
// Built with FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION: load() skips the CRC comparison so that
// mutated inputs reach the content checks. scripts/fuzz.sh builds and runs it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <stdexcept>
#include <string>

#include "compositions.hpp"

namespace {
[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_load: %s\n", what);
  std::abort();
}
std::string saved(flatmin_fuzz::driver& d) {
  std::stringstream ss;
  d.save(ss);
  return ss.str();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  flatmin_fuzz::model m;
  auto opt = flatmin_fuzz::make(data[0] % flatmin_fuzz::composition_count, m);
  opt->step(m, 0, false);  // a live optimizer: the load replaces state, not a fresh one
  const std::string before = saved(*opt);
  std::stringstream in(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  try {
    opt->load(in);
  } catch (const std::invalid_argument&) {
    if (saved(*opt) != before) fail("a failed load() changed the optimizer");
    return 0;
  }
  for (std::size_t s = 1; s <= 3; ++s) opt->step(m, s, s == 2);
  std::stringstream again(saved(*opt));
  opt->load(again);
  return 0;
}
