# Fails unless README.md contains examples/quickstart.cpp verbatim (so the README's sample is the
# code that ctest compiles and runs).
file(READ ${README} readme)
file(READ ${SAMPLE} sample)
string(FIND "${readme}" "${sample}" pos)
if(pos EQUAL -1)
  message(FATAL_ERROR "README.md does not contain examples/quickstart.cpp verbatim: update the quick-start section")
endif()
