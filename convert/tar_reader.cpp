#include "convert/tar.hpp"
