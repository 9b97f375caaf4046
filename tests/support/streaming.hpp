#pragma once
// Forces backend::eigen's choice of streaming stores (backend/host/stream_stores.hpp) for a scope,
// and undoes it on the way out, also when a REQUIRE leaves the test early.
#include <flatmin/backend/host/stream_stores.hpp>

namespace flatmin_test {

struct forced_streaming {
  explicit forced_streaming(flatmin::backend::host::stream_stores s) {
    flatmin::backend::host::force_stream_stores(s);
  }
  ~forced_streaming() { flatmin::backend::host::unforce_stream_stores(); }
  forced_streaming(const forced_streaming&) = delete;
  forced_streaming& operator=(const forced_streaming&) = delete;
};

}  // namespace flatmin_test
