// The string channel of tch_prune.h: the one copy helper and the one free function.
#include "tch_prune.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace tp {

char kOutOfMemory[] = "out of memory";

char* copy_string(const std::string& text) {
  char* copy = static_cast<char*>(std::malloc(text.size() + 1));
  if (copy == nullptr) throw std::bad_alloc();
  std::memcpy(copy, text.c_str(), text.size() + 1);
  return copy;
}

char* error_message(const char* what) noexcept {
  if (what == nullptr) what = "";
  const size_t size = std::strlen(what) + 1;
  char* copy = static_cast<char*>(std::malloc(size));
  if (copy == nullptr) return kOutOfMemory;
  std::memcpy(copy, what, size);
  return copy;
}

}  // namespace tp

extern "C" void tp_free_string(char* s) noexcept {
  if (s != tp::kOutOfMemory) std::free(s);
}
